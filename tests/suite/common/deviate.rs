//! A loopback teacher that answers the way real models deviate from what they were asked for.
//!
//! [`Deviant`] is an OpenAI-compatible server in front of gymforge's own simulated teacher: it
//! forwards every `POST /v1/chat/completions` to the simulator and rewrites the answer's
//! `choices[0].message` and `finish_reason` according to a [`Case`], at the stages the case is
//! set to apply to. `GET /v1/models` is forwarded too, and can announce a `max_model_len`.
//!
//! The stage of a request is read from its body: `response_format.json_schema.name`
//! (`topic_idea`, `dataset_proposals`, `task_bundle`: debug when a user message carries the
//! debug prompt's `FAILED STEP:`, codegen otherwise), and no `response_format` is an agent turn.
//! Before forwarding, the answers it rewrote are put back in the conversation's history, so the
//! simulator always sees its own answers and plays the same game as in an undisturbed run.
//!
//! Every exchange is logged per stage (the request's `max_tokens`, messages and estimated prompt
//! tokens, the status and what was answered), so tests can hold the pipeline's accounting and
//! re-asks against what the server actually saw.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gymforge::config::{Config, SimConfig};
use gymforge_actors::model::Stage;
use gymforge_actors::ports::ChatMessage;
use serde_json::{Value, json};

/// The model the deviant endpoint serves (the simulator's own id, so `/models` lists it).
pub const MODEL: &str = "gymforge-sim-teacher";
/// What a refusing model says.
pub const REFUSAL: &str = "I can't help with that.";
/// The non-ASCII text [`Case::CrlfNonAscii`] appends to titles and descriptions.
pub const NON_ASCII: &str = " — données über 数据";
/// The title of [`Case::DraftThenFinal`]'s draft idea.
pub const DRAFT_TITLE: &str = "DRAFT DO NOT USE";
/// The dataset id of [`Case::DraftThenFinal`]'s draft proposal.
pub const DRAFT_DATASET: &str = "made-up/does-not-exist";
/// The example block [`Case::TwoCodeBlocks`] puts before the real command.
pub const EXAMPLE_BLOCK: &str = "```\necho example\n```";
/// The stages that ask for JSON.
pub const JSON_STAGES: [Stage; 4] = [Stage::Topic, Stage::Dataset, Stage::Codegen, Stage::Debug];

/// How a dataset id is spelled by [`Case::HubUrls`].
#[derive(Clone, Debug, PartialEq)]
pub enum HubForm {
    /// `https://huggingface.co/datasets/ID`.
    Url,
    /// `ID@main`.
    AtMain,
    /// `ID@<sha>`.
    AtRevision(String),
}

impl HubForm {
    fn spell(&self, id: &str) -> String {
        match self {
            HubForm::Url => format!("https://huggingface.co/datasets/{id}"),
            HubForm::AtMain => format!("{id}@main"),
            HubForm::AtRevision(sha) => format!("{id}@{sha}"),
        }
    }
}

/// A way a real model's answer differs from the simulator's well-formed one (V for a JSON
/// stage, A for an agent turn).
#[derive(Clone, Debug, PartialEq)]
pub enum Case {
    /// `content: null` and `refusal` set.
    Refusal,
    /// `content: ""`.
    Empty,
    /// `finish_reason: "content_filter"` with the first third of the answer.
    ContentFilter,
    /// The first half of the answer with `finish_reason: "length"`, for the first `times`
    /// answers of each conversation (re-asks included).
    Truncation { times: u32 },
    /// A plausible wrong draft D, then "Actually, corrected:" and V in a fenced block.
    DraftThenFinal,
    /// Every number and boolean of V as a string.
    NumbersAsStrings,
    /// Enum values capitalised (`"Maximize"`) and one-element string arrays as their string
    /// (at the dataset stage: the first proposal alone, as a string).
    LooseTypes,
    /// The dataset ids of V spelled as Hub URLs or with a revision.
    HubUrls(HubForm),
    /// V as a Python literal: single quotes with escapes, True/False/None, trailing commas.
    PythonDict,
    /// V with raw newlines and tabs inside its strings.
    RawNewlines,
    /// V in a fenced json block with prose around it.
    FencedProse,
    /// A `<think>` section holding braces and a fitting object before V.
    ThinkBraces,
    /// CRLF line ends and non-ASCII text in V's titles and descriptions.
    CrlfNonAscii,
    /// The first answer of each agent step is the prose alone (re-asks get A).
    NoCodeBlock,
    /// An example block before A's block.
    TwoCodeBlocks,
    /// A's fence replaced, in turn, by `<bash>` tags, `<command>` tags and a ```bash fence.
    BashTag,
    /// A's block first, its prose after.
    CommandFirst,
}

/// What the server is set up to do.
#[derive(Clone, Debug)]
pub struct Setup {
    pub case: Case,
    /// The stages the case applies to; the others get the simulator's answers unchanged.
    pub stages: Vec<Stage>,
    /// `max_model_len` announced for [`MODEL`] by `GET /v1/models`.
    pub max_model_len: Option<u64>,
    /// A request whose estimated prompt plus `max_tokens` exceeds this is answered with vLLM's
    /// 400 "maximum context length is N tokens".
    pub context_limit: Option<u64>,
    /// The simulator's settings.
    pub sim: SimConfig,
}

impl Setup {
    /// `case` at `stages`, over the simulator of the embedded default with every first-draft
    /// bundle buggy (so that every task goes through the debug stage) and no latency.
    pub fn new(case: Case, stages: &[Stage]) -> Setup {
        let sim = SimConfig { latency_ms: 0, latency_p99_ms: 0, buggy_draft_rate: 1.0, ..Config::embedded().sim };
        Setup { case, stages: stages.to_vec(), max_model_len: None, context_limit: None, sim }
    }

    /// The simulator's answers unchanged at every stage.
    pub fn undisturbed() -> Setup {
        Setup::new(Case::Empty, &[])
    }
}

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub max_tokens: Option<u64>,
    /// `(role, content)` as the pipeline sent them (before the history was restored).
    pub messages: Vec<(String, String)>,
    /// The gateway's own estimate of the prompt's tokens.
    pub prompt_tokens: u64,
    pub status: u16,
    /// The answer's content (`None` for `null`).
    pub content: Option<String>,
    pub finish_reason: String,
    /// The case rewrote the simulator's answer.
    pub rewritten: bool,
}

impl Exchange {
    /// Characters of all the request's messages.
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(|(_, c)| c.chars().count()).sum()
    }
}

/// What the server saw and did.
#[derive(Default)]
struct Log {
    by_stage: BTreeMap<Stage, Vec<Exchange>>,
    /// Answers given per conversation (see [`conversation_key`]).
    answers: HashMap<(Stage, String), u32>,
    /// Rewritten content -> the simulator's original, to restore the history.
    originals: HashMap<String, String>,
    /// Contents sent with `finish_reason: "length"`.
    truncated: BTreeSet<String>,
    /// Requests whose stage could not be told.
    unrecognised: u32,
}

struct Proxy {
    setup: Setup,
    sim_base: String,
    http: reqwest::Client,
    log: Mutex<Log>,
}

/// The running server; it stops when dropped.
pub struct Deviant {
    /// Base URL for an endpoint's `base_url` (ends in `/v1`).
    pub base_url: String,
    proxy: Arc<Proxy>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deviant {
    /// Starts the simulator and the proxy in front of it on loopback, on a runtime of their own
    /// (so the server outlives no test and needs none).
    pub fn start(setup: Setup) -> Deviant {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
                let (sim_addr, sim_task, _) =
                    gymforge_sim::teacher::serve_counted(setup.sim.clone(), loopback).await.expect("the simulated teacher starts");
                let listener = tokio::net::TcpListener::bind(loopback).await.expect("the proxy binds");
                let addr = listener.local_addr().expect("an address");
                let proxy = Arc::new(Proxy {
                    setup,
                    sim_base: format!("http://{sim_addr}/v1"),
                    http: gymforge::http::client_builder().build().unwrap(),
                    log: Mutex::default(),
                });
                ready_tx.send((addr, proxy.clone())).expect("the test waits");
                let app =
                    Router::new().route("/v1/chat/completions", post(chat_completions)).route("/v1/models", get(models)).with_state(proxy);
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("the proxy serves"),
                    _ = stop_rx => {}
                }
                sim_task.abort();
            });
        });
        let (addr, proxy) = ready_rx.recv().expect("the proxy starts");
        Deviant { base_url: format!("http://{addr}/v1"), proxy, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// Every exchange at `stage`, in arrival order.
    pub fn exchanges(&self, stage: Stage) -> Vec<Exchange> {
        self.log().by_stage.get(&stage).cloned().unwrap_or_default()
    }

    /// Requests at `stage` answered with a completion (HTTP 200).
    pub fn answered(&self, stage: Stage) -> u64 {
        self.exchanges(stage).iter().filter(|e| e.status == 200).count() as u64
    }

    /// Answers at `stage` the case rewrote.
    pub fn rewritten(&self, stage: Stage) -> u64 {
        self.exchanges(stage).iter().filter(|e| e.rewritten).count() as u64
    }

    /// Requests whose stage the server could not tell (always 0 for gymforge's prompts).
    pub fn unrecognised(&self) -> u32 {
        self.log().unrecognised
    }

    /// A config routing every stage to this server, at non-zero prices: the JSON stages to the
    /// endpoint `deviant` with `json_keys` added, agent turns to `deviant_agent` with
    /// `agent_keys` (TOML lines of `[llm.endpoints.*]`).
    pub fn config(&self, json_keys: &str, agent_keys: &str) -> String {
        let endpoint = |name: &str, keys: &str| {
            format!(
                "[llm.endpoints.{name}]\nbase_url = \"{}\"\nmodel = \"{MODEL}\"\napi_key_env = \"GYMFORGE_DEVIANT_KEY_UNSET\"\n\
                 requests_per_minute = 6000\ninput_tokens_per_minute = 10000000\noutput_tokens_per_minute = 10000000\nmax_concurrency = 8\n\
                 timeout_secs = 60\ninput_price_per_mtok = 1.0\noutput_price_per_mtok = 2.0\nstructured_output = \"json_schema\"\n{keys}\n",
                self.base_url
            )
        };
        format!(
            "[llm.routes]\ntopic = \"deviant\"\ndataset = \"deviant\"\ncodegen = \"deviant\"\ndebug = \"deviant\"\n\
             rollout = \"deviant_agent\"\n\n{}\n{}",
            endpoint("deviant", json_keys),
            endpoint("deviant_agent", agent_keys)
        )
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.proxy.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Deviant {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn openai_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": { "message": message, "type": "BadRequestError", "param": null, "code": status.as_u16() } })))
        .into_response()
}

async fn models(State(proxy): State<Arc<Proxy>>) -> Response {
    let answer = match proxy.http.get(format!("{}/models", proxy.sim_base)).send().await {
        Ok(r) => r.json::<Value>().await,
        Err(e) => return openai_error(StatusCode::BAD_GATEWAY, &format!("the simulator does not answer: {e}")),
    };
    let mut list = match answer {
        Ok(v) => v,
        Err(e) => return openai_error(StatusCode::BAD_GATEWAY, &format!("the simulator's model list is not JSON: {e}")),
    };
    if let (Some(len), Some(data)) = (proxy.setup.max_model_len, list["data"].as_array_mut()) {
        for model in data.iter_mut().filter(|m| m["id"] == MODEL) {
            model["max_model_len"] = json!(len);
        }
    }
    axum::Json(list).into_response()
}

/// The stage a request belongs to, from its `response_format` and its messages.
fn stage_of(request: &Value, messages: &[(String, String)]) -> Option<Stage> {
    let Some(format) = request.get("response_format") else {
        return Some(Stage::Rollout);
    };
    match format["json_schema"]["name"].as_str()? {
        "topic_idea" => Some(Stage::Topic),
        "dataset_proposals" => Some(Stage::Dataset),
        "task_bundle" if messages.iter().any(|(role, c)| role == "user" && c.contains("FAILED STEP:")) => Some(Stage::Debug),
        "task_bundle" => Some(Stage::Codegen),
        _ => None,
    }
}

/// `(role, content)` of a request's messages; `null` content is "".
fn messages_of(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .map(|m| {
            m.iter().map(|m| (m["role"].as_str().unwrap_or("").to_string(), m["content"].as_str().unwrap_or("").to_string())).collect()
        })
        .unwrap_or_default()
}

/// Which conversation a request continues: for a JSON stage the messages the stage starts
/// with (two; four for debug, which shows the failed bundle), for an agent turn the history
/// up to the step's observation, without the re-ask material after it (a format error, a note
/// after a cut-off answer, or nothing).
fn conversation_key(stage: Stage, messages: &[(String, String)], truncated: &BTreeSet<String>) -> String {
    let opening = match stage {
        Stage::Debug => 4,
        Stage::Rollout => {
            let format_error = gymforge_actors::agent::format_error("");
            let prefix = &format_error[..format_error.find(':').unwrap_or(format_error.len())];
            let mut end = messages.len();
            while let Some((role, content)) = end.checked_sub(1).map(|i| (messages[i].0.as_str(), messages[i].1.as_str())) {
                let before = end.checked_sub(2).map(|i| (messages[i].0.as_str(), messages[i].1.as_str()));
                match (role, before) {
                    ("assistant", _) => end -= 1,
                    ("user", Some(("assistant", _))) if content.trim_start().starts_with(prefix) => end -= 2,
                    ("user", Some(("assistant", answer))) if truncated.contains(answer) => end -= 2,
                    ("user", Some(("user", _))) => end -= 1,
                    _ => break,
                }
            }
            end
        }
        _ => 2,
    };
    messages.iter().take(opening).map(|(r, c)| format!("{r}\u{1}{c}\u{2}")).collect()
}

async fn chat_completions(State(proxy): State<Arc<Proxy>>, body: Bytes) -> Response {
    let mut request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")),
    };
    let messages = messages_of(&request);
    let Some(stage) = stage_of(&request, &messages) else {
        proxy.lock().unrecognised += 1;
        return openai_error(StatusCode::BAD_REQUEST, "the deviant teacher cannot tell this request's stage");
    };
    let chat: Vec<ChatMessage> = messages.iter().map(|(r, c)| ChatMessage::new(r, c.clone())).collect();
    let prompt_tokens = gymforge::gateway::tokens::prompt_tokens(&chat);
    let max_tokens = request["max_tokens"].as_u64().or_else(|| request["max_completion_tokens"].as_u64());
    let exchange = |status: u16, content: Option<String>, finish: &str, rewritten: bool| Exchange {
        max_tokens,
        messages: messages.clone(),
        prompt_tokens,
        status,
        content,
        finish_reason: finish.to_string(),
        rewritten,
    };

    if let (Some(limit), Some(asked)) = (proxy.setup.context_limit, max_tokens)
        && prompt_tokens + asked > limit
    {
        proxy.lock().by_stage.entry(stage).or_default().push(exchange(400, None, "", false));
        let message = format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} tokens \
             ({prompt_tokens} in the messages, {asked} in the completion). Please reduce the length of the messages or completion.",
            prompt_tokens + asked
        );
        return openai_error(StatusCode::BAD_REQUEST, &message);
    }

    // The simulator sees its own answers in the history, not the rewritten ones.
    let (key, seen, turn) = {
        let log = proxy.lock();
        if let Some(list) = request["messages"].as_array_mut() {
            for m in list.iter_mut().filter(|m| m["role"] == "assistant") {
                if let Some(original) = m["content"].as_str().and_then(|c| log.originals.get(c)) {
                    m["content"] = json!(original);
                }
            }
        }
        let key = conversation_key(stage, &messages, &log.truncated);
        let seen = log.answers.get(&(stage, key.clone())).copied().unwrap_or(0);
        (key, seen, log.by_stage.get(&stage).map_or(0, Vec::len))
    };
    let forwarded = proxy.http.post(format!("{}/chat/completions", proxy.sim_base)).json(&request).send().await;
    let (status, mut answer) = match forwarded {
        Ok(r) => (r.status(), r.json::<Value>().await.unwrap_or(Value::Null)),
        Err(e) => return openai_error(StatusCode::BAD_GATEWAY, &format!("the simulator does not answer: {e}")),
    };
    if status != StatusCode::OK {
        proxy.lock().by_stage.entry(stage).or_default().push(exchange(status.as_u16(), None, "", false));
        return (status, axum::Json(answer)).into_response();
    }
    let original = answer["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
    let deviation = proxy.setup.stages.contains(&stage).then(|| deviate(&proxy.setup.case, stage, &original, seen, turn)).flatten();
    let mut log = proxy.lock();
    *log.answers.entry((stage, key)).or_default() += 1;
    let Some(d) = deviation else {
        log.by_stage.entry(stage).or_default().push(exchange(200, Some(original), "stop", false));
        return axum::Json(answer).into_response();
    };
    let said = d.content.clone().or_else(|| d.refusal.clone()).unwrap_or_default();
    let message = &mut answer["choices"][0]["message"];
    message["content"] = d.content.clone().map_or(Value::Null, Value::String);
    if let Some(refusal) = &d.refusal {
        message["refusal"] = json!(refusal);
    }
    answer["choices"][0]["finish_reason"] = json!(d.finish);
    // Usage counts what was said, a quarter token per character like the simulator's.
    let completion = said.chars().count().div_ceil(4) as u64;
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    answer["usage"]["completion_tokens"] = json!(completion);
    answer["usage"]["total_tokens"] = json!(prompt + completion);
    if let Some(content) = &d.content {
        if d.finish == "length" {
            log.truncated.insert(content.clone());
        }
        log.originals.insert(content.clone(), original);
    }
    log.by_stage.entry(stage).or_default().push(exchange(200, d.content, d.finish, true));
    axum::Json(answer).into_response()
}

impl Proxy {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// The deviations

/// A rewritten answer.
struct Deviation {
    content: Option<String>,
    refusal: Option<String>,
    finish: &'static str,
}

impl Deviation {
    fn says(content: String) -> Option<Deviation> {
        Some(Deviation { content: Some(content), refusal: None, finish: "stop" })
    }
}

/// The first `numerator / denominator` of `text`, cut at a character boundary.
fn head(text: &str, numerator: usize, denominator: usize) -> String {
    let n = text.chars().count() * numerator / denominator;
    text.chars().take(n).collect()
}

/// `case` applied to the simulator's `answer` at `stage`, whose conversation has had `seen`
/// answers already, as the stage's `turn`-th answer; `None` when the case leaves it alone.
fn deviate(case: &Case, stage: Stage, answer: &str, seen: u32, turn: usize) -> Option<Deviation> {
    match case {
        Case::Refusal => Some(Deviation { content: None, refusal: Some(REFUSAL.into()), finish: "stop" }),
        Case::Empty => Deviation::says(String::new()),
        Case::ContentFilter => Some(Deviation { content: Some(head(answer, 1, 3)), refusal: None, finish: "content_filter" }),
        Case::Truncation { times } => {
            (seen < *times).then(|| Deviation { content: Some(head(answer, 1, 2)), refusal: None, finish: "length" })
        }
        _ if stage == Stage::Rollout => agent_turn(case, answer, seen, turn),
        _ => {
            let v: Value = serde_json::from_str(answer).ok()?;
            json_answer(case, stage, v).and_then(Deviation::says)
        }
    }
}

/// The JSON-stage cases, on the simulator's parsed answer `v`.
fn json_answer(case: &Case, stage: Stage, v: Value) -> Option<String> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("serialisable");
    Some(match case {
        Case::DraftThenFinal => format!("Here is a draft: {}\nActually, corrected:\n```json\n{}\n```", draft(stage, &v), pretty(&v)),
        Case::NumbersAsStrings => pretty(&numbers_as_strings(v)),
        Case::LooseTypes if stage == Stage::Dataset => {
            let first = v["datasets"].get(0)?.clone();
            pretty(&json!({ "datasets": first }))
        }
        Case::LooseTypes => pretty(&loose_types(v)),
        Case::HubUrls(form) => {
            let mut v = v;
            for id in v["datasets"].as_array_mut()? {
                *id = json!(form.spell(id.as_str()?));
            }
            v.to_string()
        }
        Case::PythonDict => literal(&v, &Style::PYTHON),
        Case::RawNewlines => literal(&v, &Style::RAW_NEWLINES),
        Case::FencedProse => format!("Sure! Here is the JSON:\n```json\n{}\n```\nLet me know if you would like any changes.", pretty(&v)),
        Case::ThinkBraces => format!(
            "<think>I need {{title}} and {{\"idea\": ...}} hmm, maybe {} first? No, check it again.</think>\n{}",
            draft(stage, &v),
            pretty(&v)
        ),
        Case::CrlfNonAscii => {
            let mut v = v;
            for field in ["title", "description"] {
                if let Some(text) = v[field].as_str() {
                    v[field] = json!(format!("{text}{NON_ASCII}"));
                }
            }
            // Pretty JSON has its line breaks between tokens only (inside strings they are \n).
            pretty(&v).replace('\n', "\r\n")
        }
        _ => return None,
    })
}

/// A plausible wrong variant of `v`: the schema fits, the content does not.
fn draft(stage: Stage, v: &Value) -> String {
    let mut d = v.clone();
    match stage {
        Stage::Topic => d["title"] = json!(DRAFT_TITLE),
        Stage::Dataset => d["datasets"] = json!([DRAFT_DATASET]),
        _ => {
            if let Some(prepare) = d["files"]["prepare.py"].as_str() {
                d["files"]["prepare.py"] = json!(format!("def prepare(:\n    pass\n{prepare}"));
            }
        }
    }
    d.to_string()
}

fn numbers_as_strings(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_strings).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_strings(v))).collect()),
        other => other,
    }
}

/// The bundle's `direction` capitalised, and every one-element array of strings as its string.
fn loose_types(v: Value) -> Value {
    match v {
        Value::Array(a) if a.len() == 1 && a[0].is_string() => a.into_iter().next().expect("one element"),
        Value::Array(a) => Value::Array(a.into_iter().map(loose_types).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| match (k.as_str(), v.as_str()) {
                    ("direction", Some(d)) => {
                        let mut chars = d.chars();
                        let capitalised = chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default();
                        (k, Value::String(capitalised))
                    }
                    _ => (k, loose_types(v)),
                })
                .collect(),
        ),
        other => other,
    }
}

/// How [`literal`] writes a value.
struct Style {
    quote: char,
    /// True/False/None and a trailing comma after the last item.
    python: bool,
    /// Newlines and tabs inside strings written as they are.
    raw_newlines: bool,
}

impl Style {
    const PYTHON: Style = Style { quote: '\'', python: true, raw_newlines: false };
    const RAW_NEWLINES: Style = Style { quote: '"', python: false, raw_newlines: true };
}

/// `v` written in `style`.
fn literal(v: &Value, style: &Style) -> String {
    let items = |parts: Vec<String>, open: &str, close: &str| {
        let trailing = if style.python && !parts.is_empty() { "," } else { "" };
        format!("{open}\n  {}{trailing}\n{close}", parts.join(",\n  "))
    };
    match v {
        Value::Null => if style.python { "None" } else { "null" }.to_string(),
        Value::Bool(b) => match (style.python, b) {
            (true, true) => "True".into(),
            (true, false) => "False".into(),
            (false, b) => b.to_string(),
        },
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted(s, style),
        Value::Array(a) => items(a.iter().map(|x| literal(x, style)).collect(), "[", "]"),
        Value::Object(o) => items(o.iter().map(|(k, x)| format!("{}: {}", quoted(k, style), literal(x, style))).collect(), "{", "}"),
    }
}

fn quoted(s: &str, style: &Style) -> String {
    let mut out = String::new();
    out.push(style.quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == style.quote => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\t' if style.raw_newlines => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 && style.python => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(style.quote);
    out
}

/// An agent answer cut around its first fenced block: the text before it, the block's lines
/// (fences excluded) and the text after it. `None` when it has no complete block.
fn split_block(answer: &str) -> Option<(String, String, String)> {
    let lines: Vec<&str> = answer.lines().collect();
    let open = lines.iter().position(|l| l.trim_start().starts_with("```"))?;
    let close = open + 1 + lines[open + 1..].iter().position(|l| l.trim_start().starts_with("```"))?;
    Some((lines[..open].join("\n"), lines[open + 1..close].join("\n"), lines[close + 1..].join("\n")))
}

/// The agent-turn cases on the simulator's answer, the `seen`-th answer of its step and the
/// `turn`-th agent answer of the server.
fn agent_turn(case: &Case, answer: &str, seen: u32, turn: usize) -> Option<Deviation> {
    let (before, command, after) = split_block(answer)?;
    let content = match case {
        Case::NoCodeBlock if seen == 0 => format!("{}\n{after}", before.trim_end()),
        Case::NoCodeBlock => return None,
        Case::TwoCodeBlocks => format!(
            "{before}\nFor example, a command looks like this:\n{EXAMPLE_BLOCK}\nThe command for this step:\n```\n{command}\n```\n{after}"
        ),
        Case::BashTag => {
            let wrapped = match turn % 3 {
                0 => format!("<bash>\n{command}\n</bash>"),
                1 => format!("<command>\n{command}\n</command>"),
                _ => format!("```bash\n{command}\n```"),
            };
            format!("{before}\n{wrapped}\n{after}")
        }
        Case::CommandFirst => format!("```\n{command}\n```\n\n{}\n{after}", before.trim_end()),
        _ => return None,
    };
    Deviation::says(content)
}
