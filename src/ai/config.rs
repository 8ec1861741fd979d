//! The `[ai]` section of the config file: upstream providers, the models
//! they serve, aliases, timeouts and per-token limits.
//!
//! Only the *name* of the environment variable holding each API key is
//! configured; the key itself is read once at start-up and kept out of
//! every `Debug`, log line and error.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `[ai]` table. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiConfig {
    /// Upstreams, tried in this order when several serve one model.
    pub providers: Vec<ProviderConfig>,
    /// Extra model ids that stand for a configured model: `alias = "model"`.
    pub aliases: BTreeMap<String, String>,
    /// Time allowed to open a TCP/TLS connection to an upstream.
    pub connect_timeout_secs: u64,
    /// Time allowed for an upstream to answer: the whole body when not
    /// streaming; when streaming, until its response starts (silence after
    /// that is governed by `stream_idle_timeout_secs`).
    pub request_timeout_secs: u64,
    /// A stream that stays silent this long is ended with an error event.
    pub stream_idle_timeout_secs: u64,
    /// While a stream is silent, an SSE comment is sent this often so
    /// proxies and load balancers keep the connection open.
    pub keepalive_secs: u64,
    /// Further attempts after the first fails with a connect error, a
    /// timeout, a 429 or a 5xx before any byte reached the client; each
    /// goes to the next deployment of the model.
    pub retries: u32,
    /// How long a deployment that failed is passed over while others are healthy.
    pub cooldown_secs: u64,
    /// Requests per minute allowed to one API token (none: unlimited).
    pub requests_per_minute: Option<u32>,
    /// Prompt plus completion tokens per minute allowed to one API token.
    pub tokens_per_minute: Option<u64>,
    /// How often metered usage is written to the store.
    pub usage_flush_ms: u64,
    /// How often budgets and month-to-date spend are re-read from the store
    /// (picks up other replicas' usage and budget changes).
    pub budget_refresh_secs: u64,
}

impl Default for AiConfig {
    fn default() -> Self {
        AiConfig {
            providers: Vec::new(),
            aliases: BTreeMap::new(),
            connect_timeout_secs: 5,
            request_timeout_secs: 600,
            stream_idle_timeout_secs: 300,
            keepalive_secs: 15,
            retries: 2,
            cooldown_secs: 5,
            requests_per_minute: None,
            tokens_per_minute: None,
            usage_flush_ms: 1000,
            budget_refresh_secs: 10,
        }
    }
}

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI's API and everything compatible with it (vLLM, Ollama, Groq,
    /// OpenRouter…). `base_url` ends where OpenAI's `/v1` does.
    #[default]
    Openai,
    /// Anthropic's Messages API, translated to and from OpenAI's shapes.
    /// `base_url` is the host root (`https://api.anthropic.com`).
    Anthropic,
}

/// One `[[ai.providers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A unique name, shown as `owned_by` and in logs.
    pub name: String,
    #[serde(default)]
    pub kind: ProviderKind,
    pub base_url: String,
    /// Name of the environment variable holding the API key (none for
    /// upstreams without authentication, such as a local Ollama).
    pub api_key_env: Option<String>,
    /// Share of traffic this provider gets among the deployments of a model.
    #[serde(default = "one")]
    pub weight: u32,
    /// Anthropic only: `max_tokens` sent when the request names none.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    /// Anthropic only: the `anthropic-version` header.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// The models it serves.
    pub models: Vec<ModelConfig>,
}

fn one() -> u32 {
    1
}

fn default_max_tokens() -> u32 {
    4096
}

fn default_anthropic_version() -> String {
    "2023-06-01".into()
}

/// A model a provider serves: a bare id, or a table with the upstream's own
/// name for it and its price.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModelConfig {
    Id(String),
    Detailed(ModelDetails),
}

/// The table form of [`ModelConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDetails {
    /// The id clients send as `model`.
    pub id: String,
    /// The id the upstream knows it by (defaults to `id`).
    pub upstream: Option<String>,
    /// Price in US dollars per million prompt tokens (for budgets).
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// Price in US dollars per million completion tokens.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
}

impl ModelConfig {
    /// The table form, with defaults filled in.
    pub fn details(&self) -> ModelDetails {
        match self {
            ModelConfig::Id(id) => ModelDetails {
                id: id.clone(),
                upstream: None,
                input_usd_per_mtok: 0.0,
                output_usd_per_mtok: 0.0,
            },
            ModelConfig::Detailed(d) => d.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_section() {
        let cfg: AiConfig = toml::from_str(
            r#"
            retries = 1
            requests_per_minute = 60
            [aliases]
            fast = "gpt-4o-mini"
            [[providers]]
            name = "openai"
            base_url = "https://api.openai.com/v1"
            api_key_env = "OPENAI_API_KEY"
            models = ["gpt-4o-mini", { id = "gpt-4o", input_usd_per_mtok = 2.5, output_usd_per_mtok = 10.0 }]
            [[providers]]
            name = "anthropic"
            kind = "anthropic"
            base_url = "https://api.anthropic.com"
            api_key_env = "ANTHROPIC_API_KEY"
            models = [{ id = "claude", upstream = "claude-sonnet-4-5" }]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.retries, 1);
        assert_eq!(cfg.cooldown_secs, 5);
        assert_eq!(cfg.providers.len(), 2);
        assert_eq!(cfg.providers[1].kind, ProviderKind::Anthropic);
        assert_eq!(
            cfg.providers[0].models[1].details().output_usd_per_mtok,
            10.0
        );
        assert_eq!(
            cfg.providers[1].models[0].details().upstream.as_deref(),
            Some("claude-sonnet-4-5")
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<AiConfig>("retry = 1").is_err());
        assert!(
            toml::from_str::<AiConfig>(
                "[[providers]]\nname='a'\nbase_url='x'\napi_key='sk-123'\nmodels=[]"
            )
            .is_err()
        );
    }
}
