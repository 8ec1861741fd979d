//! The configured models, the deployments that serve each one, and which
//! deployment a request tries first, second, and so on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;

use super::config::{AiConfig, ProviderKind};
use crate::error::{Error, Result};

/// An upstream, with its credentials resolved.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// `…/chat/completions` or `…/v1/messages`, parsed once.
    pub chat_url: axum::http::Uri,
    /// `…/embeddings` (OpenAI-compatible upstreams only).
    pub embeddings_url: axum::http::Uri,
    /// The header that carries the key (`authorization` or `x-api-key`) and
    /// its value, marked sensitive so it never prints.
    pub auth: Option<(&'static str, HeaderValue)>,
    pub default_max_tokens: u32,
    pub anthropic_version: HeaderValue,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("chat_url", &self.chat_url)
            .finish_non_exhaustive()
    }
}

/// One provider serving one model.
#[derive(Debug)]
pub struct Deployment {
    pub provider: Arc<Provider>,
    /// The id the upstream knows the model by.
    pub upstream_model: String,
    /// The same id as a JSON string, ready to splice into request bodies.
    pub upstream_model_json: Bytes,
    /// Prices in US dollars per million tokens, i.e. micro-dollars per token.
    pub input_price: f64,
    pub output_price: f64,
    weight: u32,
    /// Milliseconds since the catalog was built until which this deployment
    /// is passed over (0: healthy).
    cooldown_until: AtomicU64,
}

/// A model clients can ask for, with the deployments serving it.
#[derive(Debug)]
pub struct Model {
    /// The canonical id (aliases resolve to it; usage is recorded under it).
    pub id: Arc<str>,
    pub deployments: Vec<Deployment>,
    /// Deployment indexes repeated by weight: the round-robin ring.
    ring: Vec<usize>,
    next: AtomicUsize,
}

/// Every model by id and alias, plus the `/models` listing.
pub struct Catalog {
    models: HashMap<String, Arc<Model>>,
    /// `(id, owned_by)` in the order `/models` lists them.
    pub listing: Vec<(String, String)>,
    /// `alias → canonical id`.
    pub aliases: Vec<(String, String)>,
    epoch: Instant,
    cooldown: Duration,
}

fn bad(message: String) -> Error {
    Error::bad_request(format!("[ai] {message}"))
}

impl Catalog {
    /// Builds the catalog, reading each provider's key from its env var.
    pub fn new(config: &AiConfig) -> Result<Catalog> {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// As [`Catalog::new`], with `env` standing in for the environment.
    pub fn with_env(config: &AiConfig, env: impl Fn(&str) -> Option<String>) -> Result<Catalog> {
        let mut models: Vec<(String, Vec<Deployment>)> = Vec::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for p in &config.providers {
            if !names.insert(p.name.as_str()) {
                return Err(bad(format!("provider name '{}' is used twice", p.name)));
            }
            if !(1..=1000).contains(&p.weight) {
                return Err(bad(format!(
                    "provider '{}': weight must be between 1 and 1000",
                    p.name
                )));
            }
            let base = p.base_url.trim_end_matches('/');
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(bad(format!(
                    "provider '{}': base_url must start with http:// or https://",
                    p.name
                )));
            }
            let url = |text: String| {
                axum::http::Uri::try_from(text).map_err(|e| {
                    bad(format!(
                        "provider '{}': base_url is not a URL ({e})",
                        p.name
                    ))
                })
            };
            let key = match &p.api_key_env {
                Some(var) => Some(env(var).filter(|k| !k.is_empty()).ok_or_else(|| {
                    bad(format!(
                        "provider '{}': the environment variable {var} (api_key_env) is not set",
                        p.name
                    ))
                })?),
                None => None,
            };
            let auth = key
                .map(|k| {
                    let (name, value) = match p.kind {
                        ProviderKind::Openai => ("authorization", format!("Bearer {k}")),
                        ProviderKind::Anthropic => ("x-api-key", k),
                    };
                    let mut value = HeaderValue::from_str(&value).map_err(|_| {
                        bad(format!(
                            "provider '{}': the API key is not a valid header value",
                            p.name
                        ))
                    })?;
                    value.set_sensitive(true);
                    Ok::<_, Error>((name, value))
                })
                .transpose()?;
            let provider = Arc::new(Provider {
                name: p.name.clone(),
                kind: p.kind,
                chat_url: url(match p.kind {
                    ProviderKind::Openai => format!("{base}/chat/completions"),
                    ProviderKind::Anthropic => format!("{base}/v1/messages"),
                })?,
                embeddings_url: url(format!("{base}/embeddings"))?,
                auth,
                default_max_tokens: p.default_max_tokens,
                anthropic_version: HeaderValue::from_str(&p.anthropic_version).map_err(|_| {
                    bad(format!("provider '{}': invalid anthropic_version", p.name))
                })?,
            });
            for m in &p.models {
                let m = m.details();
                if m.id.is_empty() {
                    return Err(bad(format!("provider '{}': a model id is empty", p.name)));
                }
                if m.input_usd_per_mtok < 0.0 || m.output_usd_per_mtok < 0.0 {
                    return Err(bad(format!("model '{}': prices cannot be negative", m.id)));
                }
                let upstream = m.upstream.clone().unwrap_or_else(|| m.id.clone());
                let deployment = Deployment {
                    provider: provider.clone(),
                    upstream_model_json: Bytes::from(
                        serde_json::to_vec(&upstream).expect("a string serialises"),
                    ),
                    upstream_model: upstream,
                    input_price: m.input_usd_per_mtok,
                    output_price: m.output_usd_per_mtok,
                    weight: p.weight,
                    cooldown_until: AtomicU64::new(0),
                };
                owners.entry(m.id.clone()).or_insert_with(|| p.name.clone());
                match models.iter_mut().find(|(id, _)| *id == m.id) {
                    Some((_, ds)) => ds.push(deployment),
                    None => models.push((m.id, vec![deployment])),
                }
            }
        }
        let mut listing = Vec::new();
        let mut by_id = HashMap::new();
        for (id, deployments) in models {
            let ring = deployments
                .iter()
                .enumerate()
                .flat_map(|(i, d)| std::iter::repeat_n(i, d.weight as usize))
                .collect();
            listing.push((id.clone(), owners[&id].clone()));
            by_id.insert(
                id.clone(),
                Arc::new(Model {
                    id: Arc::from(id),
                    deployments,
                    ring,
                    next: AtomicUsize::new(0),
                }),
            );
        }
        let mut aliases = Vec::new();
        for (alias, target) in &config.aliases {
            if by_id.contains_key(alias) {
                return Err(bad(format!("alias '{alias}' hides a model of that name")));
            }
            let model = by_id
                .get(target)
                .cloned()
                .ok_or_else(|| bad(format!("alias '{alias}' names unknown model '{target}'")))?;
            listing.push((alias.clone(), owners[target].clone()));
            aliases.push((alias.clone(), target.clone()));
            by_id.insert(alias.clone(), model);
        }
        Ok(Catalog {
            models: by_id,
            listing,
            aliases,
            epoch: Instant::now(),
            cooldown: Duration::from_secs(config.cooldown_secs),
        })
    }

    /// The model behind an id or alias.
    pub fn get(&self, id: &str) -> Option<&Arc<Model>> {
        self.models.get(id)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The deployments to try for one request, `attempts` long: round robin
    /// by weight for the first, then the others in order; deployments
    /// cooling down after a failure go last.
    pub fn plan(&self, model: &Model, attempts: usize) -> Vec<usize> {
        let n = model.deployments.len();
        let start = model.ring[model.next.fetch_add(1, Ordering::Relaxed) % model.ring.len()];
        let now = self.now_ms();
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: healthy ones keep their round-robin order ahead of the rest.
        order.sort_by_key(|&i| model.deployments[i].cooldown_until.load(Ordering::Relaxed) > now);
        order
            .iter()
            .copied()
            .cycle()
            .take(attempts.max(1))
            .collect()
    }

    /// Passes over a deployment for the cooldown period.
    pub fn cool_down(&self, deployment: &Deployment) {
        let until = self.now_ms() + self.cooldown.as_millis() as u64;
        deployment.cooldown_until.store(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(toml: &str) -> Result<Catalog> {
        let cfg: AiConfig = ::toml::from_str(toml).unwrap();
        Catalog::with_env(&cfg, |name| {
            (name == "KEY").then(|| "sk-secret".to_string())
        })
    }

    const TWO: &str = r#"
        [aliases]
        latest = "m"
        [[providers]]
        name = "a"
        base_url = "http://a/v1/"
        api_key_env = "KEY"
        weight = 2
        models = ["m"]
        [[providers]]
        name = "b"
        base_url = "http://b/v1"
        models = ["m", "n"]
    "#;

    #[test]
    fn aliases_and_deployments_resolve() {
        let c = catalog(TWO).unwrap();
        assert_eq!(&*c.get("latest").unwrap().id, "m");
        assert_eq!(c.get("m").unwrap().deployments.len(), 2);
        assert_eq!(
            c.get("m").unwrap().deployments[0]
                .provider
                .chat_url
                .to_string(),
            "http://a/v1/chat/completions"
        );
        assert!(c.get("nope").is_none());
        let ids: Vec<_> = c.listing.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["m", "n", "latest"]);
    }

    #[test]
    fn keys_never_print() {
        let c = catalog(TWO).unwrap();
        let p = &c.get("m").unwrap().deployments[0].provider;
        assert!(!format!("{p:?}").contains("sk-secret"));
        assert!(!format!("{:?}", p.auth).contains("sk-secret"));
    }

    #[test]
    fn weights_round_robin_and_cooldown() {
        let c = catalog(TWO).unwrap();
        let m = c.get("m").unwrap();
        let firsts: Vec<usize> = (0..6).map(|_| c.plan(m, 1)[0]).collect();
        assert_eq!(firsts, [0, 0, 1, 0, 0, 1]);
        assert_eq!(c.plan(m, 3), [0, 1, 0]);
        c.cool_down(&m.deployments[0]);
        assert_eq!(c.plan(m, 3), [1, 0, 1]);
    }

    /// The example in the README's "AI gateway" section is a working config.
    #[test]
    fn readme_example_builds() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## AI gateway").expect("the section")..];
        let start = section.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let end = start + section[start..].find("```").expect("its end");
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            ai: AiConfig,
        }
        let file: File = ::toml::from_str(&section[start..end]).unwrap();
        let c = Catalog::with_env(&file.ai, |_| Some("sk-example".to_string())).unwrap();
        assert_eq!(c.get("fast").unwrap().deployments.len(), 2);
        assert_eq!(&*c.get("smart").unwrap().id, "claude-sonnet");
        assert_eq!(
            c.get("claude-sonnet").unwrap().deployments[0].provider.kind,
            ProviderKind::Anthropic
        );
        assert!(
            c.get("llama3.2").unwrap().deployments[0]
                .provider
                .auth
                .is_none()
        );
    }

    #[test]
    fn configuration_errors_are_named() {
        let missing = catalog(
            "[[providers]]\nname='a'\nbase_url='http://a'\napi_key_env='NOPE'\nmodels=['m']",
        );
        let message = missing.err().unwrap().public_message_for_cli();
        assert!(message.contains("NOPE"), "{message}");
        assert!(catalog("[aliases]\nx='y'").is_err());
        assert!(catalog("[[providers]]\nname='a'\nbase_url='ftp://a'\nmodels=['m']").is_err());
    }
}
