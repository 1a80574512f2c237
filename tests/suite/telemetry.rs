//! OpenTelemetry export against an OTLP receiver on loopback that decodes the protobuf: the trace
//! tree of a unit (stage spans under one root, LLM spans with GenAI attributes, sandbox and
//! rollout-step spans), metrics, the `traceparent` header on LLM requests, and that neither the
//! API key nor prompt text is exported.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const KEY: &str = "sk-otel-SECRET-5150";

/// What the receiver got: `(path, headers as text, body)` of every export request.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn otlp_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let log = |path: &'static str, received: Received| {
        post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
            received.lock().unwrap().push((path.to_string(), format!("{headers:?}"), body.to_vec()));
            ""
        })
    };
    let app = axum::Router::new()
        .route("/v1/traces", log("/v1/traces", received.clone()))
        .route("/v1/metrics", log("/v1/metrics", received.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn spans(received: &Received) -> Vec<Span> {
    let received = received.lock().unwrap();
    received
        .iter()
        .filter(|(path, _, _)| path == "/v1/traces")
        .flat_map(|(_, _, body)| ExportTraceServiceRequest::decode(body.as_slice()).expect("a valid OTLP trace export").resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attr(&span.attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attr(&span.attributes, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_exports_one_trace_per_unit_with_stage_llm_sandbox_and_step_spans_and_no_secret() {
    let (endpoint, received) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gymforge"))
            .env("RUST_LOG", "warn")
            .env("OPENAI_API_KEY", KEY)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .args(["run", "--tasks", "1", "--rollouts", "1", "--out"])
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));

    // Nothing exported holds the key or the agent's system prompt.
    let system_prompt_line = "SETTING: You are an autonomous machine learning researcher";
    for (path, headers, body) in received.lock().unwrap().iter() {
        let body = String::from_utf8_lossy(body);
        assert!(!body.contains(KEY) && !headers.contains(KEY), "{path} carries the API key");
        assert!(!body.contains(system_prompt_line), "{path} carries prompt text");
    }

    let spans = spans(&received);
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name.starts_with("unit ")).collect();
    let task_root = roots
        .iter()
        .find(|s| s.name == "unit task" && text(s, "unit.status").as_deref() == Some("done"))
        .unwrap_or_else(|| panic!("no root span of an accepted task among {:?}", roots.iter().map(|s| &s.name).collect::<Vec<_>>()));
    let in_trace = |root: &Span| -> Vec<&Span> { spans.iter().filter(|s| s.trace_id == root.trace_id).collect() };
    let by_id = |trace: &[&Span]| -> BTreeMap<Vec<u8>, Span> { trace.iter().map(|s| (s.span_id.clone(), (*s).clone())).collect() };

    // The task's trace: one root, every stage span directly under it, in the unit's order.
    let trace = in_trace(task_root);
    let parentless: Vec<&&Span> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(parentless.len(), 1, "one root in the unit's trace");
    assert_eq!(parentless[0].span_id, task_root.span_id);
    let stages: Vec<&&Span> = trace.iter().filter(|s| s.name.starts_with("stage ")).collect();
    for stage in &stages {
        assert_eq!(stage.parent_span_id, task_root.span_id, "{} hangs under the unit's root", stage.name);
        assert!(stage.start_time_unix_nano >= task_root.start_time_unix_nano && stage.end_time_unix_nano <= task_root.end_time_unix_nano);
    }
    let stage_names: BTreeSet<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for stage in ["stage topic", "stage dataset", "stage codegen", "stage debug", "stage export"] {
        assert!(stage_names.contains(stage), "{stage} in {stage_names:?}");
    }

    // LLM spans: GenAI attributes, client kind, inside a stage span of the same trace.
    let ids = by_id(&trace);
    let stage_of = |span: &Span| -> Option<String> {
        let mut at = span.clone();
        while let Some(parent) = ids.get(&at.parent_span_id) {
            if parent.name.starts_with("stage ") {
                return Some(parent.name.clone());
            }
            at = parent.clone();
        }
        None
    };
    let llm: Vec<&&Span> = trace.iter().filter(|s| text(s, "gen_ai.system").is_some()).collect();
    assert!(llm.len() >= 3, "the topic, dataset and codegen stages call the LLM: {} LLM spans", llm.len());
    for span in &llm {
        assert_eq!(span.kind, 3, "{} is a client span", span.name);
        assert_eq!(text(span, "gen_ai.system").as_deref(), Some("openai"));
        assert_eq!(text(span, "gen_ai.operation.name").as_deref(), Some("chat"));
        let model = text(span, "gen_ai.request.model").expect("gen_ai.request.model");
        assert_eq!(span.name, format!("chat {model}"));
        assert!(int(span, "gen_ai.usage.input_tokens").unwrap_or(0) > 0, "input tokens on {}: {:?}", span.name, span.attributes);
        assert!(int(span, "gen_ai.usage.output_tokens").unwrap_or(0) > 0, "output tokens on {}", span.name);
        assert!(text(span, "gen_ai.input.messages").is_none(), "prompts are not recorded by default");
        assert!(stage_of(span).is_some(), "{} sits inside a stage span", span.name);
    }
    let sandbox: Vec<&&Span> = trace.iter().filter(|s| s.name == "sandbox_job").collect();
    assert!(!sandbox.is_empty(), "the debug stage runs the bundle in the sandbox");
    assert!(sandbox.iter().all(|s| stage_of(s).as_deref() == Some("stage debug")), "sandbox runs sit in the debug stage");

    // The rollout's own trace: linked to its task, steps under the rollout stage, LLM calls in steps.
    let rollout_root = roots.iter().find(|s| s.name == "unit rollout").expect("a rollout root span");
    assert_eq!(rollout_root.links.len(), 1);
    assert_eq!(
        (&rollout_root.links[0].trace_id, &rollout_root.links[0].span_id),
        (&task_root.trace_id, &task_root.span_id),
        "linked to its task"
    );
    let rollout = in_trace(rollout_root);
    let rollout_ids = by_id(&rollout);
    let steps: Vec<&&Span> = rollout.iter().filter(|s| s.name.starts_with("rollout step ")).collect();
    assert!(!steps.is_empty(), "rollout steps are traced");
    for step in &steps {
        assert_eq!(rollout_ids[&step.parent_span_id].name, "stage rollout");
    }
    let step_ids: BTreeSet<&Vec<u8>> = steps.iter().map(|s| &s.span_id).collect();
    assert!(
        rollout.iter().any(|s| text(s, "gen_ai.system").is_some() && step_ids.contains(&s.parent_span_id)),
        "the agent's LLM calls sit in its steps"
    );

    // Metrics arrived too (sent at shutdown at the latest).
    let names: BTreeSet<String> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _, _)| path == "/v1/metrics")
        .flat_map(|(_, _, body)| {
            ExportMetricsServiceRequest::decode(body.as_slice()).expect("a valid OTLP metrics export").resource_metrics
        })
        .flat_map(|r| r.scope_metrics)
        .flat_map(|s| s.metrics)
        .map(|m| m.name)
        .collect();
    for name in [
        "gymforge.stage.results",
        "gymforge.stage.duration",
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gymforge.llm.cost",
        "gymforge.sandbox.duration",
    ] {
        assert!(names.contains(name), "metric {name} in {names:?}");
    }

    // Every export, of traces and of metrics, names the one node it came from.
    let nodes: BTreeSet<Option<String>> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(path, _, body)| match path.as_str() {
            "/v1/traces" => {
                ExportTraceServiceRequest::decode(body.as_slice()).unwrap().resource_spans.into_iter().map(|r| r.resource).collect()
            }
            "/v1/metrics" => {
                ExportMetricsServiceRequest::decode(body.as_slice()).unwrap().resource_metrics.into_iter().map(|r| r.resource).collect()
            }
            _ => Vec::new(),
        })
        .map(|resource| match attr(&resource.unwrap_or_default().attributes, "service.instance.id") {
            Some(any_value::Value::StringValue(id)) => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = nodes.into_iter().next().flatten().expect("service.instance.id on every export");
    assert!(node.split('-').count() >= 3, "host-pid-start: {node}");
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_requests_carry_the_traceparent_of_their_span_and_prompts_only_when_asked() {
    let (otlp, received) = otlp_receiver().await;
    let traceparents: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = traceparents.clone();
    let llm = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap| async move {
            seen.lock().unwrap().push(headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string));
            serde_json::json!({
                "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "scripted answer"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7}
            })
            .to_string()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, llm).await.unwrap() });

    let telemetry =
        gymforge::telemetry::init(Some(&gymforge::config::TelemetryConfig { otlp_endpoint: otlp, record_prompts: true })).unwrap();
    let mut cfg = gymforge::config::Config::embedded().llm;
    let endpoint = cfg.endpoints.values_mut().next().unwrap();
    endpoint.base_url = base.clone();
    let name = cfg.endpoints.keys().next().unwrap().clone();
    cfg.routes.route_all(&name);
    let bases = BTreeMap::from([(name.clone(), base)]);
    let keys = BTreeMap::from([(name, Some(KEY.to_string()))]);
    let gateway = gymforge::gateway::Gateway::new(&cfg, &bases, &keys, 0.0, gymforge::gateway::Source::Live { record: None }).unwrap();
    use gymforge_actors::ports::{ChatMessage, ChatRequest, Llm, ResponseFormat};
    let request = ChatRequest {
        unit: "t0000".into(),
        messages: vec![ChatMessage::new("user", "a prompt worth keeping")],
        max_tokens: 16,
        temperature: 0.0,
        response: ResponseFormat::Text,
        seed: None,
    };
    gateway.chat(gymforge_actors::Stage::Topic, request).await.unwrap();
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = spans(&received);
    let call = spans.iter().find(|s| text(s, "gen_ai.system").is_some()).expect("the LLM span was exported");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let expected = format!("00-{}-{}-01", hex(&call.trace_id), hex(&call.span_id));
    assert_eq!(traceparents.lock().unwrap().as_slice(), &[Some(expected)], "the request carried its span's context");
    assert!(text(call, "gen_ai.input.messages").unwrap().contains("a prompt worth keeping"), "record_prompts puts the prompt on the span");
    assert!(text(call, "gen_ai.output.messages").unwrap().contains("scripted answer"));
    assert_eq!(text(call, "gen_ai.response.model").as_deref(), Some("scripted"));
    for (_, headers, body) in received.lock().unwrap().iter() {
        assert!(!String::from_utf8_lossy(body).contains(KEY) && !headers.contains(KEY), "the API key is never exported");
    }
}
