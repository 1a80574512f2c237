//! The OpenAI-compatible client against a scripted server on loopback: transient failures are
//! retried (honouring Retry-After), permanent ones are not, and the API key never appears in an
//! error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use gymforge::config::Config;
use gymforge::llm::OpenAiClient;
use gymforge_actors::Stage;
use gymforge_actors::ports::{ChatMessage, ChatRequest, Llm, PortError};

const KEY: &str = "sk-test-SECRET-4242";

/// One scripted answer: status, extra headers, body.
type Scripted = (u16, Vec<(&'static str, String)>, String);

#[derive(Default)]
struct Script {
    answers: VecDeque<Scripted>,
    /// Arrival time and Authorization header of every request.
    seen: Vec<(Instant, Option<String>)>,
}

fn ok_body(content: &str) -> String {
    serde_json::json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
    .to_string()
}

async fn serve(answers: Vec<Scripted>) -> (String, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script { answers: answers.into(), seen: Vec::new() }));
    let state = script.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| {
            let state = state.clone();
            async move {
                let mut s = state.lock().unwrap();
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
                s.seen.push((Instant::now(), auth));
                let (status, extra, body) = s.answers.pop_front().unwrap_or((200, vec![], ok_body("fallback")));
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                for (name, value) in extra {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), script)
}

fn client(base: String, max_retries: u32) -> OpenAiClient {
    let mut cfg = Config::embedded().llm;
    cfg.max_retries = max_retries;
    cfg.timeout_secs = 5;
    cfg.input_price_per_mtok = 1.0;
    cfg.output_price_per_mtok = 2.0;
    OpenAiClient::new(&cfg, base, Some(KEY.to_string())).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest { messages: vec![ChatMessage::new("user", "hi")], max_tokens: 16, temperature: 0.0, json: false, seed: None }
}

#[tokio::test]
async fn success_reports_usage_cost_and_sends_the_key_only_as_bearer() {
    let (base, script) = serve(vec![(200, vec![], ok_body("hello"))]).await;
    let reply = client(base, 0).chat(Stage::Topic, request()).await.unwrap();
    assert_eq!(reply.content, "hello");
    assert_eq!((reply.input_tokens, reply.output_tokens), (11, 7));
    assert!((reply.cost_usd - (11.0 * 1.0 + 7.0 * 2.0) / 1e6).abs() < 1e-12);
    assert_eq!(script.lock().unwrap().seen[0].1.as_deref(), Some(format!("Bearer {KEY}").as_str()));
}

#[tokio::test]
async fn retry_after_seconds_is_honoured_then_the_retry_succeeds() {
    let (base, script) = serve(vec![
        (429, vec![("retry-after", "1".into())], r#"{"error":{"message":"slow down"}}"#.into()),
        (200, vec![], ok_body("after the pause")),
    ])
    .await;
    let reply = client(base, 3).chat(Stage::Topic, request()).await.unwrap();
    assert_eq!(reply.content, "after the pause");
    let seen = &script.lock().unwrap().seen;
    assert_eq!(seen.len(), 2);
    assert!(seen[1].0 - seen[0].0 >= Duration::from_millis(950), "waited {:?}", seen[1].0 - seen[0].0);
}

#[tokio::test]
async fn retry_after_ms_and_http_dates_are_understood() {
    let date = httpdate(std::time::SystemTime::now() + Duration::from_secs(2));
    let (base, script) = serve(vec![
        (503, vec![("retry-after-ms", "300".into())], "busy".into()),
        (429, vec![("retry-after", date)], "busy".into()),
        (200, vec![], ok_body("done")),
    ])
    .await;
    client(base, 3).chat(Stage::Topic, request()).await.unwrap();
    let seen = &script.lock().unwrap().seen;
    assert_eq!(seen.len(), 3);
    assert!(seen[1].0 - seen[0].0 >= Duration::from_millis(280));
    // An HTTP date has one-second resolution: at least one second must pass.
    assert!(seen[2].0 - seen[1].0 >= Duration::from_millis(950), "waited {:?}", seen[2].0 - seen[1].0);
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let (base, script) = serve(vec![(500, vec![], "boom".into()); 10]).await;
    let err = client(base, 2).chat(Stage::Topic, request()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(script.lock().unwrap().seen.len(), 3, "one try and two retries");
}

#[tokio::test]
async fn permanent_failures_are_not_retried_and_never_show_the_key() {
    for (status, body) in [
        (401, r#"{"error":{"message":"Incorrect API key provided: sk-test-SECRET-4242"}}"#.to_string()),
        (400, r#"{"error":{"message":"context_length_exceeded"}}"#.to_string()),
        (429, r#"{"error":{"code":"insufficient_quota"}}"#.to_string()),
    ] {
        let (base, script) = serve(vec![(status, vec![], body)]).await;
        let err = client(base, 5).chat(Stage::Topic, request()).await.unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)), "{status}: {err:?}");
        assert!(!err.to_string().contains(KEY), "{err}");
        assert_eq!(script.lock().unwrap().seen.len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_one_clear_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = client(format!("http://{addr}/v1"), 0).check_reachable().await.unwrap_err().to_string();
    assert!(err.contains("unreachable") && err.contains("llm.endpoint") && !err.contains(KEY), "{err}");
}

/// Formats a time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month_name = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {h:02}:{m:02}:{s:02} GMT")
}
