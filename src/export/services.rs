//! What services a run used, as report.json's `services` says it: the LLM (and, per stage, the
//! endpoint that answered it) and the Hub, each labelled simulated or not. The SFT lines' and the
//! summary's simulated marks come from here.

use std::collections::BTreeMap;

use gymforge_actors::model::Stage;
use serde::{Deserialize, Serialize};

/// The services of one run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceLabels {
    pub hub: HubLabel,
    pub llm: LlmLabel,
}

/// The Hub the run verified datasets against.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HubLabel {
    pub kind: String,
    pub simulated: bool,
    pub endpoint: String,
    /// Where the endpoint came from (`config`, `HF_ENDPOINT`); absent for the embedded mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewer: Option<String>,
    /// Whether a token was sent (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<bool>,
}

/// The LLM: every routed endpoint, and which one answered each stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LlmLabel {
    pub kind: String,
    /// Any stage's endpoint is simulated; `stages` says which.
    pub simulated: bool,
    /// The rollout stage's model: the teacher.
    pub model: String,
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointLabel>,
    /// Absent in reports of version 1, which labelled the LLM only as a whole.
    #[serde(default)]
    pub stages: BTreeMap<Stage, StageLabel>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EndpointLabel {
    pub base_url: String,
    pub model: String,
    pub simulated: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StageLabel {
    pub endpoint: String,
    pub model: String,
    pub simulated: bool,
}

impl ServiceLabels {
    /// True when any service (any stage's endpoint) is simulated.
    pub fn any_simulated(&self) -> bool {
        self.hub.simulated || self.llm.simulated
    }

    /// Whether the rollout stage's endpoint, the teacher whose trajectories become SFT data, was
    /// simulated. Labels without per-stage entries say it only for the LLM as a whole.
    pub fn teacher_simulated(&self) -> bool {
        self.llm.stages.get(&Stage::Rollout).map_or(self.llm.simulated, |label| label.simulated)
    }
}
