//! AI gateway fields: the configured models, usage and the monthly budget.

use std::sync::Arc;

use async_graphql::{Context, ID, Object, Result, SimpleObject};
use chrono::NaiveDate;

use super::{db, domain_ctx};
use crate::ai::{Gateway, usage};
use crate::error::Error;

fn gateway<'a>(ctx: &Context<'a>) -> &'a Gateway {
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
