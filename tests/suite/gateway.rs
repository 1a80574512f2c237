//! The LLM gateway against servers on loopback: a scripted server for exact sequences, and the
//! simulated teacher for injected faults. Covers the shared cooldown, every form of retry hint,
//! permanent versus transient failures, the circuit breaker, JSON re-asks, the run budget,
//! record and replay, and that the API key never leaves the Authorization header.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use gymforge::config::{Config, LlmConfig, SimFaults, StructuredOutput};
use gymforge::gateway::{Gateway, Source};
use gymforge_actors::Stage;
use gymforge_actors::ports::{ChatMessage, ChatReply, ChatRequest, Llm, PortError, ResponseFormat};
use serde_json::Value;

const KEY: &str = "sk-test-SECRET-4242";

/// One scripted answer: status, extra headers, body.
type Scripted = (u16, Vec<(&'static str, String)>, String);

#[derive(Default)]
struct Script {
    answers: VecDeque<Scripted>,
    /// While set, every request is answered 503 (the endpoint is down).
    down: bool,
    /// Arrival time, Authorization header and body of every request.
    seen: Vec<(Instant, Option<String>, Value)>,
    /// When each 429 was sent.
    limited_at: Vec<Instant>,
    /// The status `GET /models` answers (200 when unset).
    models_status: Option<u16>,
    /// The body `GET /models` answers (`{}` when unset).
    models_body: Option<String>,
}

/// A chat completion with any `content` (a string or null), `refusal` and `finish_reason`.
fn answer_body(content: Value, refusal: Option<&str>, finish_reason: &str) -> String {
    serde_json::json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": refusal}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
    .to_string()
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
    let script = Arc::new(Mutex::new(Script { answers: answers.into(), ..Script::default() }));
    let state = script.clone();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let mut s = state.lock().unwrap();
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
                    s.seen.push((Instant::now(), auth, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    let (status, extra, body) = if s.down {
                        (503, vec![], "down".to_string())
                    } else {
                        s.answers.pop_front().unwrap_or((200, vec![], ok_body("fallback")))
                    };
                    if status == 429 {
                        s.limited_at.push(Instant::now());
                    }
                    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                    for (name, value) in extra {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    response
                }
            }),
        )
        .route("/v1/models", {
            let state = script.clone();
            get(move || {
                let s = state.lock().unwrap();
                let (status, body) = (s.models_status.unwrap_or(200), s.models_body.clone().unwrap_or_else(|| "{}".into()));
                async move { (StatusCode::from_u16(status).unwrap(), body) }
            })
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), script)
}

/// The embedded LLM config with one endpoint `main` at `base` serving every stage.
fn llm_config(base: &str, tweak: impl FnOnce(&mut LlmConfig)) -> LlmConfig {
    let mut cfg = Config::embedded().llm;
    let mut e = cfg.endpoints["sim"].clone();
    e.base_url = base.to_string();
    e.timeout_secs = 5;
    e.input_price_per_mtok = 1.0;
    e.output_price_per_mtok = 2.0;
    cfg.endpoints = BTreeMap::from([("main".to_string(), e)]);
    cfg.routes.route_all("main");
    cfg.max_retries = 3;
    tweak(&mut cfg);
    cfg
}

fn gateway(cfg: &LlmConfig, source: Source) -> Gateway {
    let bases = cfg.endpoints.iter().map(|(n, e)| (n.clone(), e.base_url.clone())).collect();
    let keys = cfg.endpoints.keys().map(|n| (n.clone(), Some(KEY.to_string()))).collect();
    Gateway::new(cfg, &bases, &keys, 0.0, source).unwrap()
}

fn live(base: &str, tweak: impl FnOnce(&mut LlmConfig)) -> Gateway {
    gateway(&llm_config(base, tweak), Source::Live { record: None })
}

/// A gateway whose endpoint `main` found no API key in its variable `GYMFORGE_TEST_UNSET_KEY`.
fn live_without_key(base: &str) -> Gateway {
    let cfg = llm_config(base, |c| c.endpoints.get_mut("main").unwrap().api_key_env = "GYMFORGE_TEST_UNSET_KEY".into());
    let bases = cfg.endpoints.iter().map(|(n, e)| (n.clone(), e.base_url.clone())).collect();
    let keys = cfg.endpoints.keys().map(|n| (n.clone(), None)).collect();
    Gateway::new(&cfg, &bases, &keys, 0.0, Source::Live { record: None }).unwrap()
}

fn request(unit: &str) -> ChatRequest {
    ChatRequest {
        unit: unit.into(),
        messages: vec![ChatMessage::new("user", "hi")],
        max_tokens: 16,
        temperature: 0.0,
        response: ResponseFormat::Text,
        seed: None,
    }
}

fn snapshot(g: &Gateway) -> Value {
    serde_json::to_value(g.snapshot()).unwrap()["endpoints"]["main"].clone()
}

#[tokio::test]
async fn success_reports_usage_cost_endpoint_and_sends_the_key_only_as_bearer() {
    let (base, script) = serve(vec![(200, vec![], ok_body("hello"))]).await;
    let g = live(&base, |_| {});
    let reply = g.chat(Stage::Topic, request("t1")).await.unwrap();
    assert_eq!(reply.content, "hello");
    assert_eq!(reply.endpoint, "main");
    assert_eq!((reply.input_tokens, reply.output_tokens), (11, 7));
    assert!((reply.cost_usd - (11.0 * 1.0 + 7.0 * 2.0) / 1e6).abs() < 1e-12);
    let s = script.lock().unwrap();
    assert_eq!(s.seen[0].1.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    assert!(!s.seen[0].2.to_string().contains(KEY), "the key is not in the body");
    assert_eq!(snapshot(&g)["succeeded"], 1);
}

/// An empty answer is billed by the provider: it is answered, its tokens and cost counted, and
/// it is handed to the stage (which decides what to do with it), but it is not a success.
#[tokio::test]
async fn an_empty_answer_is_answered_and_billed_but_not_a_success() {
    let (base, script) = serve(vec![(200, vec![], ok_body("")), (200, vec![], ok_body("hello"))]).await;
    let g = live(&base, |_| {});
    assert_eq!(g.chat(Stage::Topic, request("t1")).await.unwrap().content, "");
    assert_eq!(g.chat(Stage::Topic, request("t1")).await.unwrap().content, "hello");
    assert_eq!(script.lock().unwrap().seen.len(), 2, "the empty answer was not retried");
    let s = snapshot(&g);
    assert_eq!((s["requests_sent"].as_u64(), s["answered"].as_u64(), s["succeeded"].as_u64()), (Some(2), Some(2), Some(1)), "{s}");
    assert_eq!((s["input_tokens"].as_u64(), s["output_tokens"].as_u64()), (Some(22), Some(14)), "{s}");
    assert!((s["cost_usd"].as_f64().unwrap() - 2.0 * (11.0 + 14.0) / 1e6).abs() < 1e-12, "{s}");
}

#[tokio::test]
async fn json_requests_carry_the_schema_the_endpoint_understands() {
    for (mode, expected) in [
        (StructuredOutput::JsonSchema, Some("json_schema")),
        (StructuredOutput::JsonObject, Some("json_object")),
        (StructuredOutput::None, None),
    ] {
        let (base, script) = serve(vec![]).await;
        let g = live(&base, |c| c.endpoints.get_mut("main").unwrap().structured_output = mode);
        let (name, schema) = gymforge_actors::schemas::topic_idea();
        let req = ChatRequest { response: ResponseFormat::Json { name, schema: schema.clone() }, ..request("t1") };
        g.chat(Stage::Topic, req).await.unwrap();
        let body = script.lock().unwrap().seen[0].2.clone();
        assert_eq!(body["response_format"]["type"].as_str(), expected, "{mode:?}");
        if mode == StructuredOutput::JsonSchema {
            assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
            assert_eq!(body["response_format"]["json_schema"]["name"], "topic_idea");
        }
    }
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_an_http_date_is_honoured() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    let (base, script) = serve(vec![
        (429, vec![("retry-after", "1".into())], r#"{"error":{"message":"slow down"}}"#.into()),
        (429, vec![("retry-after", date)], "busy".into()),
        (200, vec![], ok_body("after the pauses")),
    ])
    .await;
    let g = live(&base, |_| {});
    let reply = g.chat(Stage::Topic, request("t1")).await.unwrap();
    assert_eq!(reply.content, "after the pauses");
    let seen = &script.lock().unwrap().seen;
    assert_eq!(seen.len(), 3);
    assert!(seen[1].0 - seen[0].0 >= Duration::from_millis(1000), "waited {:?}", seen[1].0 - seen[0].0);
    // An HTTP date has one-second resolution: at least one second must pass.
    assert!(seen[2].0 - seen[1].0 >= Duration::from_millis(950), "waited {:?}", seen[2].0 - seen[1].0);
    assert_eq!(snapshot(&g)["cooldowns"], 2);
}

#[tokio::test]
async fn retry_after_ms_and_openai_reset_headers_are_honoured() {
    let (base, script) = serve(vec![
        (429, vec![("retry-after-ms", "300".into())], "busy".into()),
        (429, vec![("x-ratelimit-reset-requests", "250ms".into()), ("x-ratelimit-reset-tokens", "0.4s".into())], "busy".into()),
        (503, vec![("retry-after-ms", "200".into())], "overloaded".into()),
        (200, vec![], ok_body("done")),
    ])
    .await;
    live(&base, |_| {}).chat(Stage::Topic, request("t1")).await.unwrap();
    let seen = &script.lock().unwrap().seen;
    assert_eq!(seen.len(), 4);
    assert!(seen[1].0 - seen[0].0 >= Duration::from_millis(300));
    assert!(seen[2].0 - seen[1].0 >= Duration::from_millis(400), "the longer of the two reset headers");
    assert!(seen[3].0 - seen[2].0 >= Duration::from_millis(200), "a 503's hint is honoured too");
}

#[tokio::test]
async fn a_429_pauses_every_worker_of_the_endpoint() {
    let (base, script) = serve(vec![(429, vec![("retry-after-ms", "1500".into())], "slow down".into())]).await;
    let g = Arc::new(live(&base, |_| {}));
    let first = tokio::spawn({
        let g = g.clone();
        async move { g.chat(Stage::Topic, request("a")).await }
    });
    // Wait until the gateway has learned of the cooldown, then start three more workers.
    while snapshot(&g)["cooldown_remaining_ms"].as_u64().unwrap_or(0) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let others: Vec<_> = ["b", "c", "d"]
        .into_iter()
        .map(|unit| {
            let g = g.clone();
            tokio::spawn(async move { g.chat(Stage::Rollout, request(unit)).await })
        })
        .collect();
    first.await.unwrap().unwrap();
    for o in others {
        o.await.unwrap().unwrap();
    }
    let s = script.lock().unwrap();
    let limited = s.limited_at[0];
    assert_eq!(s.seen.len(), 5, "one 429, its retry, three other requests");
    for (at, _, _) in &s.seen[1..] {
        assert!(*at >= limited + Duration::from_millis(1500), "a request arrived {:?} after the 429", *at - limited);
    }
}

#[tokio::test]
async fn transient_failures_are_retried_a_bounded_number_of_times() {
    let (base, script) = serve(vec![(500, vec![], "boom".into()); 10]).await;
    let err = live(&base, |c| c.max_retries = 2).chat(Stage::Topic, request("t1")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(script.lock().unwrap().seen.len(), 3, "one try and two retries");
}

#[tokio::test]
async fn permanent_failures_are_classified_not_retried_and_never_show_the_key() {
    for (status, body, reason) in [
        (401, format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#), "llm_auth"),
        (403, "forbidden".to_string(), "llm_auth"),
        (429, r#"{"error":{"code":"insufficient_quota"}}"#.to_string(), "llm_quota"),
        (400, r#"{"error":{"code":"context_length_exceeded"}}"#.to_string(), "llm_context_length"),
        (404, "no such model".to_string(), "llm_bad_request"),
    ] {
        let (base, script) = serve(vec![(status, vec![], body)]).await;
        let g = live(&base, |c| c.max_retries = 5);
        let err = g.chat(Stage::Topic, request("t1")).await.unwrap_err();
        match &err {
            PortError::Refused { reason: r, .. } => assert_eq!(r.as_str(), reason, "{status}"),
            other => panic!("{status}: {other:?}"),
        }
        assert!(!err.to_string().contains(KEY), "{err}");
        assert_eq!(script.lock().unwrap().seen.len(), 1, "{status} is not retried");
        assert_eq!(snapshot(&g)["permanent_failures"], 1);
    }
}

#[tokio::test]
async fn the_circuit_opens_pauses_the_endpoint_probes_and_closes() {
    let (base, script) = serve(vec![]).await;
    script.lock().unwrap().down = true;
    let g = Arc::new(live(&base, |c| {
        c.max_retries = 30;
        c.circuit_failure_secs = 1;
        c.circuit_probe_secs = 1;
    }));
    let call = tokio::spawn({
        let g = g.clone();
        async move { g.chat(Stage::Topic, request("t1")).await }
    });
    while snapshot(&g)["circuit"]["state"] != "open" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = snapshot(&g);
    assert!(status["circuit"]["reason"].as_str().unwrap().contains("503"), "{status}");
    // While open, only probes reach the server: at most one per probe interval.
    let before = script.lock().unwrap().seen.len();
    let opened = Instant::now();
    let paused = tokio::spawn({
        let g = g.clone();
        async move { g.chat(Stage::Rollout, request("t2")).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = script.lock().unwrap().seen.len() - before;
    let probes_allowed = opened.elapsed().as_secs() as usize + 1;
    assert!(during <= probes_allowed, "{during} requests in {:?} while open", opened.elapsed());
    script.lock().unwrap().down = false;
    call.await.unwrap().unwrap();
    paused.await.unwrap().unwrap();
    let status = snapshot(&g);
    assert_eq!(status["circuit"]["state"], "closed", "{status}");
    assert_eq!(status["circuit_openings"], 1);
}

#[tokio::test]
async fn unparseable_json_is_asked_again_with_the_error_then_the_unit_fails() {
    let (base, script) = serve(vec![
        (200, vec![], ok_body("Sure! Here is my idea: a great one.")),
        (200, vec![], ok_body("<think>the title...</think>```json\n{\"title\": \"T\", \"idea\": \"I\"}\n```")),
    ])
    .await;
    let g = live(&base, |_| {});
    #[derive(serde::Deserialize)]
    struct Idea {
        title: String,
    }
    let replies = Mutex::new(0);
    let on_reply = |_: &ChatReply| {
        *replies.lock().unwrap() += 1;
        Ok(())
    };
    let idea: Idea = gymforge_actors::llm::ask_json_with(&g, Stage::Topic, request("t1"), &on_reply).await.unwrap().unwrap();
    assert_eq!(idea.title, "T");
    assert_eq!(*replies.lock().unwrap(), 2);
    let second = script.lock().unwrap().seen[1].2.clone();
    let last = second["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(last.contains("could not be parsed") && last.contains("no JSON object"), "{last}");

    let (base, _) = serve(vec![(200, vec![], ok_body("no json")); 5]).await;
    let g = live(&base, |_| {});
    let outcome = gymforge_actors::llm::ask_json_with::<Value>(&g, Stage::Topic, request("t1"), &|_: &ChatReply| Ok(())).await.unwrap();
    assert!(outcome.is_err(), "after the re-asks the unit fails (llm_unparseable)");
    assert_eq!(snapshot(&g)["succeeded"].as_u64(), Some(1 + gymforge_actors::llm::JSON_REASKS as u64));
}

/// A JSON request of the topic stage's shape, asking for `max_tokens`.
fn json_request(unit: &str, max_tokens: u32) -> ChatRequest {
    let (name, schema) = gymforge_actors::schemas::topic_idea();
    ChatRequest { max_tokens, response: ResponseFormat::Json { name, schema }, ..request(unit) }
}

#[derive(serde::Deserialize, Debug)]
struct Idea {
    title: String,
}

async fn ask_idea(g: &Gateway, max_tokens: u32) -> Result<Idea, gymforge_actors::llm::NoAnswer> {
    gymforge_actors::llm::ask_json_with::<Idea>(g, Stage::Topic, json_request("t1", max_tokens), &|_: &ChatReply| Ok(())).await.unwrap()
}

#[tokio::test]
async fn a_refusal_an_empty_answer_and_a_filtered_one_are_answers_dropped_at_once_not_retried() {
    for (body, reason, shown) in [
        (answer_body(Value::Null, Some("I can't help with that."), "stop"), "llm_refused", "I can't help with that."),
        (answer_body(Value::Null, None, "stop"), "llm_empty", "no text"),
        (answer_body(Value::from("  \n"), None, "stop"), "llm_empty", "no text"),
        (answer_body(Value::from("{\"title\": \"half"), None, "content_filter"), "llm_content_filter", "content filter"),
    ] {
        let (base, script) = serve(vec![(200, vec![], body)]).await;
        let g = live(&base, |_| {});
        let no = ask_idea(&g, 64).await.unwrap_err();
        assert_eq!(no.reason.as_str(), reason);
        assert!(no.detail.contains(shown), "{reason}: {}", no.detail);
        assert_eq!(script.lock().unwrap().seen.len(), 1, "{reason}: answered once, never retried");
        let status = snapshot(&g);
        assert_eq!(
            (status["retries"].as_u64(), status["input_tokens"].as_u64()),
            (Some(0), Some(11)),
            "{reason}: billed and counted: {status}"
        );
        assert!(status["cost_usd"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test]
async fn a_cut_off_answer_is_asked_again_once_larger_without_the_cut_text_then_dropped_as_truncated() {
    let cut = answer_body(Value::from("{\"title\": \"A long tit"), None, "length");
    let (base, script) = serve(vec![(200, vec![], cut.clone()), (200, vec![], ok_body("{\"title\": \"T\", \"idea\": \"I\"}"))]).await;
    let g = live(&base, |_| {});
    assert_eq!(ask_idea(&g, 100).await.unwrap().title, "T");
    let seen: Vec<Value> = script.lock().unwrap().seen.iter().map(|(_, _, b)| b.clone()).collect();
    assert_eq!(
        (seen[0]["max_tokens"].as_u64(), seen[1]["max_tokens"].as_u64()),
        (Some(100), Some(200)),
        "the re-ask may write twice as much"
    );
    assert_eq!(seen[0]["messages"], seen[1]["messages"], "the cut-off text is not sent back");

    // With the server's cap already reached, the re-ask asks for brevity instead; then the unit drops.
    let (base, script) = serve(vec![(200, vec![], cut.clone()), (200, vec![], cut)]).await;
    let g = live(&base, |c| c.endpoints.get_mut("main").unwrap().max_output_tokens = Some(100));
    let no = ask_idea(&g, 100).await.unwrap_err();
    assert_eq!(no.reason.as_str(), "llm_truncated");
    let seen: Vec<Value> = script.lock().unwrap().seen.iter().map(|(_, _, b)| b.clone()).collect();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1]["max_tokens"].as_u64(), Some(100));
    let last = seen[1]["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(last.contains("cut off at 100 tokens") && !last.contains("A long tit"), "{last}");
}

#[tokio::test]
async fn requests_fit_the_published_context_and_a_refusal_naming_the_maximum_is_sent_again_fitted() {
    // The server publishes a 600-token context (vLLM's max_model_len) and caps max_tokens at 200.
    let (base, script) = serve(vec![
        (400, vec![], r#"{"error":{"message":"max_tokens must be at most 200","type":"BadRequestError"}}"#.into()),
        (200, vec![], ok_body("fine")),
        (
            400,
            vec![],
            concat!(
                r#"{"object":"error","message":"This model's maximum context length is 500 tokens. "#,
                r#"However, you requested 690 tokens (490 in the messages, 200 in the completion). "#,
                r#"Please reduce the length of the messages or completion.","type":"BadRequestError","code":400}"#
            )
            .into(),
        ),
        (200, vec![], ok_body("fine")),
    ])
    .await;
    script.lock().unwrap().models_body =
        Some(r#"{"object":"list","data":[{"id":"gymforge-sim-teacher","object":"model","max_model_len":600}]}"#.into());
    let g = live(&base, |_| {});
    g.check_reachable().await.unwrap();
    assert_eq!(g.limits(Stage::Topic).context_tokens, Some(600));
    g.chat(Stage::Topic, ChatRequest { max_tokens: 4096, ..request("t1") }).await.unwrap();
    let limits = g.limits(Stage::Topic);
    assert_eq!(limits.max_output_tokens, Some(200), "learned from the refusal");
    // A long prompt: the server's own count (490 of 500) decides the room left.
    let long = ChatRequest { messages: vec![ChatMessage::new("user", "word ".repeat(300))], max_tokens: 4096, ..request("t2") };
    g.chat(Stage::Topic, long).await.unwrap();
    let seen: Vec<u64> = script.lock().unwrap().seen.iter().map(|(_, _, b)| b["max_tokens"].as_u64().unwrap()).collect();
    assert_eq!(seen.len(), 4);
    assert!(seen[0] <= 600 && seen[1] <= 200 && seen[3] <= 9, "max_tokens sent: {seen:?}");
    assert_eq!(g.limits(Stage::Topic).context_tokens, Some(500));

    // A prompt that cannot fit is refused without a request.
    let huge = ChatRequest { messages: vec![ChatMessage::new("user", "word ".repeat(2000))], ..request("t3") };
    match g.chat(Stage::Topic, huge).await {
        Err(PortError::Refused { reason, detail }) => {
            assert!(reason.as_str() == "llm_context_length" && detail.contains("500 tokens"), "{detail}")
        }
        other => panic!("expected llm_context_length, got {other:?}"),
    }
    assert_eq!(script.lock().unwrap().seen.len(), 4);
}

#[tokio::test]
async fn the_run_budget_stops_calls_once_spent() {
    let (base, script) = serve(vec![]).await;
    // Each call costs 11 x $1 + 7 x $2 per million tokens = $0.000025.
    let g = live(&base, |c| c.run_budget_usd = 0.00004);
    g.chat(Stage::Topic, request("t1")).await.unwrap();
    g.chat(Stage::Topic, request("t2")).await.unwrap();
    let err = g.chat(Stage::Topic, request("t3")).await.unwrap_err();
    assert!(matches!(&err, PortError::Refused { reason, .. } if reason.as_str() == "budget_exhausted"), "{err:?}");
    assert_eq!(script.lock().unwrap().seen.len(), 2, "the refused call never reached the endpoint");
}

#[tokio::test]
async fn a_recorded_run_replays_without_the_endpoint_and_the_record_holds_no_key() {
    let (base, _) = serve(vec![
        (429, vec![("retry-after-ms", "10".into())], format!("rate limited for key {KEY}")),
        (200, vec![], ok_body("one")),
        (200, vec![], ok_body("two")),
        (200, vec![], ok_body("three")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("record.jsonl");
    let cfg = llm_config(&base, |_| {});
    let recorded = {
        let g = gateway(&cfg, Source::Live { record: Some(file.clone()) });
        let mut out = Vec::new();
        for unit in ["u1", "u2", "u1"] {
            out.push(g.chat(Stage::Codegen, request(unit)).await.unwrap().content);
        }
        out
    };
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 4, "every exchange, the 429 included");
    assert!(!text.contains(KEY), "the key is redacted from the record");

    // The endpoint is gone: replay answers from the file alone.
    let replay_cfg = llm_config("http://127.0.0.1:9/v1", |_| {});
    let g = gateway(&replay_cfg, Source::Replay(file));
    let mut replayed = Vec::new();
    for unit in ["u1", "u2", "u1"] {
        replayed.push(g.chat(Stage::Codegen, request(unit)).await.unwrap().content);
    }
    assert_eq!(replayed, recorded);
    assert_eq!(g.snapshot().replay.map(|r| r.mismatches), Some(0));
    let err = g.chat(Stage::Codegen, request("u3")).await.unwrap_err();
    assert!(matches!(&err, PortError::Refused { reason, .. } if reason.as_str() == "replay_missing"), "{err:?}");
}

#[tokio::test]
async fn every_injected_fault_of_the_simulated_teacher_is_survived() {
    let mut sim = Config::embedded().sim;
    sim.latency_ms = 1;
    sim.latency_p99_ms = 5;
    sim.faults = SimFaults {
        rate_429: 0.1,
        retry_after_ms: 20,
        rate_429_bare: 0.05,
        rate_500: 0.1,
        rate_503: 0.1,
        rate_hang: 0.05,
        hang_secs: 30,
        rate_reset: 0.1,
        ..SimFaults::default()
    };
    let (addr, server, counters) = gymforge_sim::teacher::serve_counted(sim, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let g = Arc::new(live(&format!("http://{addr}/v1"), |c| {
        c.max_retries = 12;
        c.cooldown_without_hint_ms = 50;
        let e = c.endpoints.get_mut("main").unwrap();
        e.timeout_secs = 1;
        e.structured_output = StructuredOutput::JsonSchema;
    }));
    let prompts = gymforge::run::prompts();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let g = g.clone();
            let system = prompts.topic_system.clone();
            let user = gymforge_actors::template::render(
                &prompts.topic_user,
                &[
                    ("domain", "botany"),
                    ("task_type", "classification"),
                    ("modality", "tabular"),
                    ("twist", "none"),
                    ("taken", &format!("- idea {i}")),
                ],
            )
            .unwrap();
            tokio::spawn(async move {
                let req = ChatRequest {
                    messages: vec![ChatMessage::new("system", system), ChatMessage::new("user", user)],
                    ..request(&format!("t{i}"))
                };
                g.chat(Stage::Topic, req).await
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("every call ends in an answer despite the faults");
    }
    server.abort();
    let seen = counters.snapshot();
    for fault in ["rate_limited", "rate_limited_bare", "internal_error", "unavailable", "hang", "reset"] {
        assert!(seen["faults"][fault].as_u64().unwrap() > 0, "{fault} was injected: {seen}");
    }
    let s = snapshot(&g);
    assert_eq!(s["succeeded"], 40);
    assert!(s["rate_limited"].as_u64().unwrap() > 0 && s["transient_failures"].as_u64().unwrap() > 0, "{s}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_one_clear_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let g = live(&format!("http://{addr}/v1"), |_| {});
    let err = g.check_reachable().await.unwrap_err().to_string();
    assert!(err.contains("unreachable") && err.contains("llm.endpoints.main.base_url") && !err.contains(KEY), "{err}");
}

#[tokio::test]
async fn an_auth_refusal_says_whether_the_key_variable_is_unset() {
    for status in [401, 403] {
        let (base, script) = serve(vec![(status, vec![], "unauthorized".into()); 2]).await;
        script.lock().unwrap().models_status = Some(status);
        let err = live_without_key(&base).check_reachable().await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "the LLM endpoint `main` at {base} answered HTTP {status}: it needs an API key, \
                 and the variable GYMFORGE_TEST_UNSET_KEY (llm.endpoints.main.api_key_env) is not set"
            )
        );
        let err = live(&base, |_| {}).check_reachable().await.unwrap_err().to_string();
        assert!(err.contains("refused the API key") && !err.contains("not set") && !err.contains(KEY), "{err}");

        // The same distinction in a chat call's drop detail.
        match live_without_key(&base).chat(Stage::Topic, request("t1")).await.unwrap_err() {
            PortError::Refused { reason, detail } => {
                assert_eq!(reason.as_str(), "llm_auth");
                assert!(detail.contains("the variable GYMFORGE_TEST_UNSET_KEY (llm.endpoints.main.api_key_env) is not set"), "{detail}");
            }
            other => panic!("{status}: {other:?}"),
        }
        match live(&base, |_| {}).chat(Stage::Topic, request("t2")).await.unwrap_err() {
            PortError::Refused { reason, detail } => assert!(reason.as_str() == "llm_auth" && !detail.contains("not set"), "{detail}"),
            other => panic!("{status}: {other:?}"),
        }
    }
}
