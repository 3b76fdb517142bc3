//! A quote: what a job would cost and deliver before it runs (`switchyard quote`), computed by the dispatcher's own route planning
//! (`switchyard_core::route`): the same pins, rules, router, estimates and plan. No
//! NATS needed; prices come from the database when it answers (the versions in force, what
//! a dispatch would use) and from the configuration otherwise.
//!
//! The figures are predictions: costs from estimated tokens × prices, quality from the
//! router's gain estimates over the weak model's mean quality on the task kind (measured
//! when the router was trained). Escalations are not in the expected cost; the report gives
//! their ceiling (every weak answer escalating).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rust_decimal::Decimal;
use serde::Serialize;
use switchyard_core::calibrate::{KeyKind, Plan};
use switchyard_core::policy::Route;
use switchyard_core::pricing::Price;
use switchyard_core::route::{ItemRoute, JobFacets, JobRouter, TierPrices};
use switchyard_proto::{Item, Policy, Task};
use switchyard_router::Router;
use switchyard_runtime::Settings;

use crate::policy_arg::{self, PolicyArg};

/// The task flags shared by `submit`, `quote` and `router explain --file`.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskArgs {
    /// What to do with each item: classify, summarize or generate (required).
    #[arg(long)]
    pub task: Option<switchyard_proto::TaskKind>,
    /// Labels for `--task classify` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Word budget for `--task summarize`.
    #[arg(long)]
    pub max_words: Option<u32>,
    /// Instructions for the model (replaces the task's default).
    #[arg(long)]
    pub instructions: Option<String>,
}

impl TaskArgs {
    /// The task these flags describe.
    ///
    /// # Errors
    /// `classify` without labels.
    pub fn task(&self) -> anyhow::Result<Task> {
        use switchyard_proto::TaskKind;
        let Some(kind) = self.task else {
            bail!("--task is required (classify, summarize or generate)");
        };
        Ok(match kind {
            TaskKind::Classify => {
                if self.labels.is_empty() {
                    bail!("--task classify needs --labels a,b,c");
                }
                Task::Classify {
                    labels: self.labels.clone(),
                    instructions: self.instructions.clone(),
                }
            }
            TaskKind::Summarize => Task::Summarize {
                max_words: self.max_words,
                instructions: self.instructions.clone(),
            },
            TaskKind::Generate => Task::Generate {
                instructions: self.instructions.clone(),
            },
            TaskKind::Chat => bail!(
                "--task chat takes chat requests, which come through the OpenAI-compatible \
                 API (`switchyard api`), not from --file"
            ),
        })
    }
}

/// The job-shaped flags of `quote` and `router explain --file`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Routing policy: strong-share=P, threshold=T, budget-usd=USD, quality=Q, shadow=F
    /// (comma-separated or repeated; default strong-share=0.2).
    #[arg(long, value_parser = policy_arg::parse, value_delimiter = ',')]
    pub policy: Vec<PolicyArg>,
    /// Use this model for a tier: `weak=MODEL` (repeatable).
    #[arg(long = "model", value_parser = parse_pair)]
    pub models: Vec<(String, String)>,
    /// Team and project the job would be billed to (routing rules may match on them).
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
}

/// `TIER=MODEL`, as `--model` takes it (`quote`, `submit`, `router explain`).
///
/// # Errors
/// A message naming the text.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
        .ok_or_else(|| format!("`{s}`: expected TIER=MODEL"))
}

/// Where the prices of a quote came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    Database,
    Configuration,
}

/// A job routed on paper.
pub struct Quoted {
    pub items: Vec<Item>,
    /// Per item (input order): what the dispatcher would store, and the raw router score.
    pub routes: Vec<(ItemRoute, f32)>,
    pub plan: Plan,
    pub policy: Policy,
    pub task: Task,
    pub router_name: String,
    pub weak_quality: f64,
    pub prices: TierPrices,
    pub price_source: PriceSource,
    pub weak_tier: String,
    pub strong_tier: String,
}

impl Quoted {
    /// Where item `i` goes.
    pub fn tier_of(&self, i: usize) -> String {
        let (route, _) = &self.routes[i];
        if let Some(t) = &route.tier {
            return t.clone();
        }
        match self.plan.cut.route(route.key, i as i64) {
            Route::Strong => self.strong_tier.clone(),
            _ => self.weak_tier.clone(),
        }
    }
}

/// The router a dispatcher with these settings uses.
///
/// # Errors
/// A configured artifact that cannot be loaded.
pub fn configured_router(settings: &Settings) -> anyhow::Result<Arc<dyn Router>> {
    Ok(switchyard_router::configured_router(
        settings.dispatcher.router.as_deref().map(Path::new),
    )?)
}

/// Prices from the database when it answers within a second, else from the configuration.
pub async fn prices_for(
    settings: &Settings,
    overrides: &BTreeMap<String, String>,
) -> (TierPrices, PriceSource) {
    let db = async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(1))
            .connect(settings.database_url())
            .await
            .ok()?;
        let mut found: BTreeMap<String, Option<Price>> = BTreeMap::new();
        for tier in settings.tiers.keys() {
            if let Some(m) = settings.model_for(tier, overrides) {
                let p = switchyard_store::routing::current_price(&pool, m)
                    .await
                    .ok()?;
                found.insert(m.to_owned(), p);
            }
        }
        pool.close().await;
        Some(found)
    };
    match tokio::time::timeout(Duration::from_secs(3), db).await {
        Ok(Some(found)) if found.values().any(Option::is_some) => (
            settings.tier_prices(overrides, |m| {
                found
                    .get(m)
                    .copied()
                    .flatten()
                    .or_else(|| settings.price_of(m))
            }),
            PriceSource::Database,
        ),
        _ => (
            settings.tier_prices(overrides, |m| settings.price_of(m)),
            PriceSource::Configuration,
        ),
    }
}

/// Routes `items` as a dispatcher with `settings` would.
///
/// # Errors
/// Bad flags, a configured router or rule that cannot load, or a policy the job cannot meet
/// (a budget below its all-weak cost).
pub async fn compute(
    settings: &Settings,
    items: Vec<Item>,
    job: &JobArgs,
) -> anyhow::Result<Quoted> {
    let task = job.task.task()?;
    let mut policy = Policy::default();
    policy_arg::apply(&job.policy, &mut policy).map_err(anyhow::Error::msg)?;
    policy.models = job.models.iter().cloned().collect();
    for (tier, model) in &policy.models {
        match settings.models.get(model) {
            Some(m) if m.tier == *tier => {}
            Some(m) => bail!("model `{model}` serves tier `{}`, not `{tier}`", m.tier),
            None => bail!("unknown model `{model}`"),
        }
    }
    let router = configured_router(settings)?;
    let rules = settings.routing_rules()?;
    let (prices, price_source) = prices_for(settings, &policy.models).await;
    let ds = &settings.dispatcher;
    let team = job.team.clone().unwrap_or_else(|| "default".to_owned());
    let project = job.project.clone().unwrap_or_else(|| "default".to_owned());
    let jr = JobRouter::new(
        &settings.route_config(&rules, &policy.models),
        JobFacets {
            routing: &policy.routing,
            task: &task,
            team: &team,
            project: &project,
        },
        &prices,
        router.planned_weak_quality(task.kind()),
    );
    let mut inputs = jr.inputs();
    let mut routes = Vec::with_capacity(items.len());
    for (seq, item) in items.iter().enumerate() {
        if switchyard_core::validate::is_local_only(item) && settings.local_tier().is_none() {
            bail!(
                "item {:?} is local_only but this deployment has no local tier",
                item.item_id
            );
        }
        let score = router.score(&item.text, task.kind());
        routes.push(jr.route(item, seq as i64, score, &mut inputs));
    }
    let plan = jr.plan(&mut inputs)?;
    let weak_quality = jr.weak_quality;
    Ok(Quoted {
        items,
        routes,
        plan,
        router_name: router.name().to_owned(),
        weak_quality,
        prices,
        price_source,
        weak_tier: ds.weak_tier.clone(),
        strong_tier: ds.strong_tier.clone(),
        policy,
        task,
    })
}

/// The quote as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct QuoteReport {
    pub items: usize,
    pub policy: String,
    pub shadow: Option<f64>,
    pub router: String,
    pub prices: PriceSource,
    /// Model per tier.
    pub models: BTreeMap<String, String>,
    /// Items per tier they would start on.
    pub by_tier: BTreeMap<String, usize>,
    /// Items decided by each rule (`sensitivity` for pins).
    pub by_rule: BTreeMap<String, usize>,
    /// Share of the items the policy decides that go strong.
    pub strong_share: f64,
    #[serde(serialize_with = "ser_usd")]
    pub expected_cost_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub cost_all_weak_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub cost_all_strong_usd: Decimal,
    /// The most escalations could add: every weak-routed answer escalating to strong.
    #[serde(serialize_with = "ser_usd")]
    pub escalation_ceiling_usd: Decimal,
    /// Expected cost of the shadow calls the `shadow` fraction adds.
    #[serde(serialize_with = "ser_usd")]
    pub shadow_cost_usd: Decimal,
    pub predicted_quality: f64,
    pub quality_all_weak: f64,
    pub quality_all_strong: f64,
    pub quality_vs_all_strong: f64,
    /// The weak model's mean quality the predictions start from.
    pub weak_quality: f64,
    /// Tiers whose model has no price (their costs count as zero).
    pub unpriced: Vec<String>,
}

fn ser_usd<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

/// Summarizes a routed job.
pub fn report(q: &Quoted) -> QuoteReport {
    let mut by_tier: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    let mut ceiling = Decimal::ZERO;
    let mut shadow = Decimal::ZERO;
    for (i, (route, _)) in q.routes.iter().enumerate() {
        let tier = q.tier_of(i);
        if let Some(rule) = &route.rule {
            *by_rule.entry(rule.clone()).or_default() += 1;
        }
        if tier == q.weak_tier && !switchyard_core::validate::is_local_only(&q.items[i]) {
            ceiling += route.est_strong_usd;
        }
        *by_tier.entry(tier).or_default() += 1;
    }
    // The shadow fraction of the weak-routed items' strong cost (an expectation: which items
    // are sampled depends on the job id).
    if let Some(f) = q.policy.shadow {
        shadow = (ceiling * Decimal::from_f64_retain(f).unwrap_or_default()).round_dp(9);
    }
    let unpriced = q
        .prices
        .0
        .iter()
        .filter(|(_, (_, p))| p.is_none())
        .map(|(t, _)| t.clone())
        .collect();
    QuoteReport {
        items: q.items.len(),
        policy: q.plan.policy.clone(),
        shadow: q.policy.shadow,
        router: q.router_name.clone(),
        prices: q.price_source,
        models: q
            .prices
            .0
            .iter()
            .map(|(t, (m, _))| (t.clone(), m.clone()))
            .collect(),
        by_tier,
        by_rule,
        strong_share: q.plan.strong_share(),
        expected_cost_usd: q.plan.expected_usd,
        cost_all_weak_usd: q.plan.all_weak_usd,
        cost_all_strong_usd: q.plan.all_strong_usd,
        escalation_ceiling_usd: ceiling,
        shadow_cost_usd: shadow,
        predicted_quality: q.plan.predicted_quality,
        quality_all_weak: q.plan.all_weak_quality,
        quality_all_strong: q.plan.all_strong_quality,
        quality_vs_all_strong: q.plan.quality_vs_all_strong(),
        weak_quality: q.weak_quality,
        unpriced,
    }
}

fn usd(d: Decimal) -> String {
    format!("${}", d.round_dp(4))
}

/// The quote for people.
pub fn render(r: &QuoteReport, plan: &Plan) -> String {
    let mut out = format!(
        "{} items, policy {}{}, router {}\n",
        r.items,
        r.policy,
        r.shadow
            .map(|f| format!(" + shadow={f}"))
            .unwrap_or_default(),
        r.router
    );
    let tiers: Vec<String> = r.by_tier.iter().map(|(t, n)| format!("{t} {n}")).collect();
    out.push_str(&format!(
        "routed:            {}  (strong share {:.1}% of the {} items the policy decides)\n",
        tiers.join(", "),
        100.0 * r.strong_share,
        plan.decided
    ));
    if !r.by_rule.is_empty() {
        let rules: Vec<String> = r.by_rule.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!("decided by rules:  {}\n", rules.join(", ")));
    }
    if let Some(cut) = plan.cut_key {
        out.push_str(&format!(
            "cut:               {} at least {cut:.6}\n",
            match plan.key {
                KeyKind::Score => "score",
                KeyKind::GainPerDollar => "gain per extra dollar",
            }
        ));
    }
    out.push_str(&format!(
        "expected cost:     {}  (all weak {}, all strong {}; prices from the {})\n",
        usd(r.expected_cost_usd),
        usd(r.cost_all_weak_usd),
        usd(r.cost_all_strong_usd),
        match r.prices {
            PriceSource::Database => "database",
            PriceSource::Configuration => "configuration",
        }
    ));
    out.push_str(&format!(
        "  + escalations:   at most {} (if every weak answer escalated)\n",
        usd(r.escalation_ceiling_usd)
    ));
    if r.shadow.is_some() {
        out.push_str(&format!(
            "  + shadow calls:  about {}\n",
            usd(r.shadow_cost_usd)
        ));
    }
    out.push_str(&format!(
        "predicted quality: {:.3}  ({:.1}% of all strong {:.3}; all weak {:.3})\n",
        r.predicted_quality,
        100.0 * r.quality_vs_all_strong,
        r.quality_all_strong,
        r.quality_all_weak
    ));
    if !r.unpriced.is_empty() {
        out.push_str(&format!(
            "warning: no price for tier(s) {}: their cost counts as $0\n",
            r.unpriced.join(", ")
        ));
    }
    out
}
