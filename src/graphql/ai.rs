//! AI gateway fields: the configured models, chat completions for the
//! dashboard, usage and the monthly budget.

use std::sync::Arc;

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use axum::http::StatusCode;
use chrono::NaiveDate;

use super::{db, domain_ctx};
use crate::ai::chat::{self, Refusal};
use crate::ai::{Caller, Gateway, usage};
use crate::auth::Role;
use crate::error::Error;

fn gateway<'a>(ctx: &Context<'a>) -> &'a Arc<Gateway> {
    ctx.data_unchecked::<Arc<Gateway>>()
}

/// A model clients may name in `model`.
#[derive(SimpleObject)]
pub struct AiModel {
    pub id: String,
    /// The provider serving it (the first, when several do).
    pub owned_by: String,
    /// For an alias, the model it stands for.
    pub alias_of: Option<String>,
    /// How many deployments share its traffic.
    pub deployments: i32,
}

/// Usage for one day, model and API token.
#[derive(SimpleObject)]
pub struct AiUsageRow {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    pub api_key_id: ID,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// At the configured prices.
    pub cost_usd: f64,
}

/// The organisation's usage over a range of days, and its monthly budget.
#[derive(SimpleObject)]
pub struct AiUsage {
    pub from: String,
    pub to: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
    /// None: no budget.
    pub monthly_budget_cents: Option<i64>,
    /// Spent this calendar month (UTC), as recorded so far.
    pub month_to_date_usd: f64,
    /// Newest day first.
    pub rows: Vec<AiUsageRow>,
}

impl From<usage::Report> for AiUsage {
    fn from(r: usage::Report) -> Self {
        let rows: Vec<AiUsageRow> = r
            .rows
            .into_iter()
            .map(|u| AiUsageRow {
                day: u.day.to_string(),
                model: u.model,
                api_key_id: ID(u.api_key_id.to_string()),
                requests: u.requests,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.prompt_tokens + u.completion_tokens,
                cost_usd: u.cost_micro_usd as f64 / 1e6,
            })
            .collect();
        AiUsage {
            from: r.from.to_string(),
            to: r.to.to_string(),
            requests: rows.iter().map(|r| r.requests).sum(),
            prompt_tokens: rows.iter().map(|r| r.prompt_tokens).sum(),
            completion_tokens: rows.iter().map(|r| r.completion_tokens).sum(),
            total_tokens: rows.iter().map(|r| r.total_tokens).sum(),
            cost_usd: rows.iter().map(|r| r.cost_usd).sum(),
            monthly_budget_cents: r.monthly_budget_cents,
            month_to_date_usd: r.month_spent as f64 / 1e6,
            rows,
        }
    }
}

/// Who wrote a chat message.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
#[graphql(rename_items = "lowercase")]
pub enum AiChatRole {
    System,
    User,
    Assistant,
}

impl AiChatRole {
    fn as_str(self) -> &'static str {
        match self {
            AiChatRole::System => "system",
            AiChatRole::User => "user",
            AiChatRole::Assistant => "assistant",
        }
    }
}

#[derive(InputObject)]
pub struct AiChatMessageInput {
    pub role: AiChatRole,
    pub content: String,
}

#[derive(InputObject)]
pub struct AiChatInput {
    /// A model id or alias, as listed by `aiModels`.
    pub model: String,
    /// The conversation so far, oldest first (at least one message).
    pub messages: Vec<AiChatMessageInput>,
    /// Sampling temperature, 0 to 2 (default: the model's).
    pub temperature: Option<f64>,
    /// Most tokens the answer may have (default: the model's; 4096 for
    /// Anthropic models unless the provider sets another).
    pub max_tokens: Option<i32>,
}

/// Tokens one completion used, as the model's provider counted them.
#[derive(SimpleObject)]
pub struct AiTokenUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

/// The answer of `aiChatCompletion`.
#[derive(SimpleObject)]
pub struct AiChatCompletion {
    /// The provider's id of this completion.
    pub id: String,
    /// The model that answered, as its provider names it.
    pub model: String,
    /// The answer; null when the model produced no text.
    pub content: Option<String>,
    /// `stop`, `length`, `content_filter`, …
    pub finish_reason: Option<String>,
    /// Null when the provider reported no usage (an estimate is metered then).
    pub usage: Option<AiTokenUsage>,
}

impl From<chat::Reply> for AiChatCompletion {
    fn from(r: chat::Reply) -> Self {
        AiChatCompletion {
            id: r.id,
            model: r.model,
            content: r.content,
            finish_reason: r.finish_reason,
            usage: r.usage.map(|u| AiTokenUsage {
                prompt_tokens: u.prompt_tokens as i64,
                completion_tokens: u.completion_tokens as i64,
                total_tokens: u.total() as i64,
            }),
        }
    }
}

/// Checks what the gateway would pass to a provider unchecked, so a bad
/// value is named by its GraphQL field.
fn prompt(input: AiChatInput) -> Result<chat::Prompt, Error> {
    if input.messages.is_empty() {
        return Err(Error::field("messages", "must hold at least one message"));
    }
    if let Some(t) = input.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(Error::field("temperature", "must be between 0 and 2"));
    }
    let max_tokens = input
        .max_tokens
        .map(|m| {
            u32::try_from(m)
                .ok()
                .filter(|&m| m >= 1)
                .ok_or_else(|| Error::field("maxTokens", "must be at least 1"))
        })
        .transpose()?;
    Ok(chat::Prompt {
        model: input.model,
        messages: input
            .messages
            .into_iter()
            .map(|m| chat::Message {
                role: m.role.as_str(),
                content: m.content,
            })
            .collect(),
        temperature: input.temperature,
        max_tokens,
    })
}

/// The gateway's refusal as a GraphQL error: a bad field is named by its
/// GraphQL name (an unknown model is a bad `model`), limits and budgets
/// are `RATE_LIMITED`, upstream failures `UNAVAILABLE`.
fn refused(r: Refusal) -> Error {
    let field = r.param.as_deref().and_then(|p| match p {
        "model" => Some("model"),
        "temperature" => Some("temperature"),
        "max_tokens" | "max_completion_tokens" => Some("maxTokens"),
        p if p.starts_with("messages") => Some("messages"),
        _ => None,
    });
    match (r.status, field) {
        (StatusCode::TOO_MANY_REQUESTS, _) => Error::RateLimited(r.message),
        (s, Some(field)) if s.is_client_error() => Error::field(field, r.message),
        (StatusCode::UNAUTHORIZED, _) => Error::Unauthenticated(r.message),
        (StatusCode::FORBIDDEN, _) => Error::Forbidden(r.message),
        (StatusCode::NOT_FOUND, _) => Error::NotFound(r.message),
        (StatusCode::CONFLICT, _) => Error::Conflict(r.message),
        (StatusCode::UNPROCESSABLE_ENTITY, _) => Error::Unprocessable(r.message),
        (s, _) if s.is_client_error() => Error::bad_request(r.message),
        _ => Error::Unavailable(r.message),
    }
}

fn date(field: &str, value: Option<String>) -> Result<Option<NaiveDate>, Error> {
    value
        .map(|v| {
            NaiveDate::parse_from_str(&v, "%Y-%m-%d")
                .map_err(|_| Error::field(field, "must be a date as YYYY-MM-DD"))
        })
        .transpose()
}

#[derive(Default)]
pub struct AiQuery;

#[Object]
impl AiQuery {
    /// Models served by `/api/v1/chat/completions` and `/api/v1/embeddings`.
    async fn ai_models(&self, ctx: &Context<'_>) -> Result<Vec<AiModel>> {
        domain_ctx(ctx)?;
        let catalog = &gateway(ctx).catalog;
        Ok(catalog
            .listing
            .iter()
            .map(|(id, owner)| {
                let model = catalog.get(id).expect("listed models resolve");
                AiModel {
                    id: id.clone(),
                    owned_by: owner.clone(),
                    alias_of: (**id != *model.id).then(|| model.id.to_string()),
                    deployments: model.deployments.len() as i32,
                }
            })
            .collect())
    }

    /// Tokens, requests and cost for days `from..=to` (UTC, `YYYY-MM-DD`;
    /// default: this month so far).
    async fn ai_usage(
        &self,
        ctx: &Context<'_>,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<AiUsage> {
        let report = usage::report(
            db(ctx),
            domain_ctx(ctx)?,
            date("from", from)?,
            date("to", to)?,
        )
        .await?;
        Ok(report.into())
    }
}

#[derive(Default)]
pub struct AiMutation;

#[Object]
impl AiMutation {
    /// One chat completion, through the same gateway path as
    /// `POST /api/v1/chat/completions`: aliases, fallback between
    /// deployments, the monthly budget and per-token limits, and usage
    /// recorded for the caller's organisation and API token (a dashboard
    /// session is recorded under a key derived from its user). Needs the
    /// write role, like every mutation.
    async fn ai_chat_completion(
        &self,
        ctx: &Context<'_>,
        input: AiChatInput,
    ) -> Result<AiChatCompletion> {
        let c = domain_ctx(ctx)?;
        c.require(Role::Write)?;
        let prompt = prompt(input)?;
        let reply = chat::ask(gateway(ctx), Caller::of(&c.principal), &prompt)
            .await
            .map_err(refused)?;
        Ok(reply.into())
    }

    /// Sets the organisation's monthly AI budget in US cents (null: none).
    /// Once spent, the gateway answers 429 until the next month. Admins only.
    async fn set_ai_budget(
        &self,
        ctx: &Context<'_>,
        monthly_budget_cents: Option<i64>,
    ) -> Result<AiUsage> {
        let c = domain_ctx(ctx)?;
        usage::set_budget(db(ctx), &gateway(ctx).meter, c, monthly_budget_cents).await?;
        Ok(usage::report(db(ctx), c, None, None).await?.into())
    }
}
