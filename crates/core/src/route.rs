//! Where each item of a job goes, and why: route planning, shared by the dispatcher,
//! `switchyard quote` and `router explain --file`, so a quote is exactly what a dispatch
//! would do. The caller scores items with its router (this crate knows no router) and hands
//! the raw score in; the deployment's side of routing (tiers, rules, token ceilings) comes as
//! one [`RouteConfig`].
//!
//! In the documented order (see [`crate::rules`]):
//! 1. a `local_only` item is pinned to the local tier;
//! 2. otherwise the first matching routing rule forces a tier or shifts the learned score;
//! 3. every item not pinned or forced is a candidate of the job's policy, with its (shifted)
//!    score, its predicted gain (the raw score) and its estimated extra cost on the strong
//!    model. [`PlanInputs::plan`] turns the candidates into one cut
//!    ([`crate::calibrate`]).
//!
//! Every item is scored by the router, pinned or not, so audits and explanations can show
//! the score of items that a pin or rule decided.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use switchyard_proto::{Item, Routing, Task};

use crate::calibrate::{self, Candidate, JobFacts, Plan, PlanError};
use crate::estimate;
use crate::pricing::Price;
use crate::rules::{Effect, ItemFacts, RuleSet};
use crate::validate;

/// The rule name stored for items pinned by their sensitivity.
pub const SENSITIVITY_RULE: &str = "sensitivity";

/// The rule name stored for chat items that named a model (not a routing alias): they run
/// on that model's tier.
pub const MODEL_RULE: &str = "model";

/// Why an item goes where it goes, as stored with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemRoute {
    /// The rule that decided it (`sensitivity` for a pin); `None`: the policy alone.
    pub rule: Option<String>,
    /// The tier a pin or rule forced; `None`: the policy decides.
    pub tier: Option<String>,
    /// The router's score after the rule's shift.
    pub score: f32,
    /// What the job's cut compares.
    pub key: f32,
    pub est_weak_usd: Decimal,
    pub est_strong_usd: Decimal,
}

/// The deployment's side of routing, the same for every job: which tiers play weak, strong
/// and local, the compiled routing rules, and the weak model's generation ceiling (token
/// estimates of `generate` tasks). Built from the configuration by
/// `switchyard_runtime::Settings::route_config`.
#[derive(Debug, Clone, Copy)]
pub struct RouteConfig<'a> {
    pub weak_tier: &'a str,
    pub strong_tier: &'a str,
    pub local_tier: Option<&'a str>,
    pub rules: &'a RuleSet,
    /// `generate_max_tokens` of the job's weak model.
    pub generate_max_tokens: u32,
}

/// The job's side of routing: what it asks for and who it is.
#[derive(Debug, Clone, Copy)]
pub struct JobFacets<'a> {
    pub routing: &'a Routing,
    pub task: &'a Task,
    pub team: &'a str,
    pub project: &'a str,
}

/// Per tier, the job's model and its price (`None`: the model has no known price).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierPrices(pub BTreeMap<String, (String, Option<Price>)>);

impl TierPrices {
    /// The job's model of each tier (`(tier, model)`, overrides already applied) priced by
    /// `price_of`.
    pub fn resolve<'m>(
        models: impl IntoIterator<Item = (&'m str, &'m str)>,
        mut price_of: impl FnMut(&str) -> Option<Price>,
    ) -> Self {
        Self(
            models
                .into_iter()
                .map(|(tier, model)| (tier.to_owned(), (model.to_owned(), price_of(model))))
                .collect(),
        )
    }

    /// The price of `tier`'s model, if it is priced.
    pub fn price(&self, tier: &str) -> Option<&Price> {
        self.0.get(tier).and_then(|(_, p)| p.as_ref())
    }

    fn model(&self, tier: &str) -> &str {
        self.0.get(tier).map_or("?", |(m, _)| m.as_str())
    }
}

/// Everything that decides the items of one job.
#[derive(Debug, Clone)]
pub struct JobRouter<'a> {
    pub routing: &'a Routing,
    pub task: &'a Task,
    pub team: &'a str,
    pub project: &'a str,
    pub rules: &'a RuleSet,
    pub weak_tier: &'a str,
    pub strong_tier: &'a str,
    pub local_tier: Option<&'a str>,
    pub prices: &'a TierPrices,
    /// How many tokens an item of this job is expected to use.
    pub estimator: estimate::Estimator,
    /// The weak model's expected quality on this job's task kind (the router's measurement,
    /// or an assumption when it has none).
    pub weak_quality: f64,
    /// The tier of each configured model, for chat items that pin one
    /// ([`JobRouter::with_model_tiers`]); empty: such items go to the weak tier, whose
    /// worker reports the model as not configured.
    pub model_tiers: BTreeMap<String, String>,
}

/// What the policy will be computed from, accumulated item by item (32 bytes a candidate).
#[derive(Debug, Clone, Default)]
pub struct PlanInputs {
    pub candidates: Vec<Candidate>,
    pub facts: JobFacts,
    /// Tiers whose model had no price when an item needed it.
    pub unpriced: BTreeSet<String>,
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("budget_usd needs prices, and {0} has none (set one with `switchyard prices set`)")]
    Unpriced(String),
}

impl<'a> JobRouter<'a> {
    /// The router of one job under a deployment's routing configuration.
    pub fn new(
        config: &RouteConfig<'a>,
        job: JobFacets<'a>,
        prices: &'a TierPrices,
        weak_quality: f64,
    ) -> Self {
        Self {
            routing: job.routing,
            task: job.task,
            team: job.team,
            project: job.project,
            rules: config.rules,
            weak_tier: config.weak_tier,
            strong_tier: config.strong_tier,
            local_tier: config.local_tier,
            prices,
            estimator: estimate::Estimator::new(job.task, config.generate_max_tokens),
            weak_quality,
            model_tiers: BTreeMap::new(),
        }
    }

    /// How this job's items are weighed by their strong cost ([`crate::quality::CostWeigher`]),
    /// `mean_usd` the plan's mean estimated strong cost an item; `None` when the strong tier
    /// is unpriced.
    pub fn cost_weigher(&self, mean_usd: f64) -> Option<crate::quality::CostWeigher> {
        self.prices
            .price(self.strong_tier)
            .map(|p| crate::quality::CostWeigher::new(p, &self.estimator, mean_usd))
    }

    /// The same router, knowing which tier runs each model (`model → tier`), so a chat item
    /// that names a model goes to that model's tier.
    #[must_use]
    pub fn with_model_tiers(mut self, model_tiers: BTreeMap<String, String>) -> Self {
        self.model_tiers = model_tiers;
        self
    }

    /// Estimated cost of the item on `tier` (zero, and noted, when its model is unpriced).
    fn cost_on(
        &self,
        tier: &str,
        tokens: estimate::TokenEstimate,
        acc: &mut PlanInputs,
    ) -> Decimal {
        match self.prices.price(tier) {
            Some(p) => estimate::cost(tokens, p),
            None => {
                acc.unpriced.insert(tier.to_owned());
                Decimal::ZERO
            }
        }
    }

    /// Decides one item given the router's raw `score` for it: applies the pin or the first
    /// matching rule, and either records it as fixed or adds it to the policy's candidates.
    /// Returns what is stored with the item and its raw score (a non-finite score counts as
    /// 0). Scoring stays with the caller, so pass 2 of a dispatch can reuse pass 1's scores.
    pub fn route(
        &self,
        item: &Item,
        seq: i64,
        score: f32,
        acc: &mut PlanInputs,
    ) -> (ItemRoute, f32) {
        let kind = self.task.kind();
        let score = if score.is_finite() { score } else { 0.0 };
        let qw = acc.facts.weak_quality;
        let tokens = self.estimator.tokens(&item.text);
        let weak_usd = self.cost_on(self.weak_tier, tokens, acc);
        let strong_usd = self.cost_on(self.strong_tier, tokens, acc);
        let mut route = ItemRoute {
            rule: None,
            tier: None,
            score,
            key: score,
            est_weak_usd: weak_usd,
            est_strong_usd: strong_usd,
        };
        let pinned = match self.task {
            Task::Chat {} => switchyard_proto::chat::pinned_model(&item.text),
            _ => None,
        };
        let forced = if validate::is_local_only(item) {
            route.rule = Some(SENSITIVITY_RULE.to_owned());
            self.local_tier.map(str::to_owned)
        } else if let Some(model) = pinned {
            route.rule = Some(MODEL_RULE.to_owned());
            Some(
                self.model_tiers
                    .get(&model)
                    .cloned()
                    .unwrap_or_else(|| self.weak_tier.to_owned()),
            )
        } else {
            let facts = ItemFacts {
                task: kind,
                team: self.team,
                project: self.project,
                metadata: &item.metadata,
                text: &item.text,
            };
            match self.rules.first_match(&facts) {
                None => None,
                Some(m) => {
                    route.rule = Some(m.name.to_owned());
                    match m.effect {
                        Effect::Force(tier) => Some(tier.clone()),
                        Effect::Shift(s) => {
                            route.score = score + s;
                            None
                        }
                    }
                }
            }
        };
        if let Some(tier) = forced {
            acc.facts.fixed_items += 1;
            let cost = if tier == self.weak_tier {
                weak_usd
            } else if tier == self.strong_tier {
                strong_usd
            } else {
                self.cost_on(&tier, tokens, acc)
            };
            acc.facts.fixed_usd += cost;
            acc.facts.fixed_quality += if tier == self.strong_tier {
                calibrate::strong_quality(qw, score)
            } else {
                qw
            };
            route.key = route.score;
            route.tier = Some(tier);
            return (route, score);
        }
        let extra = strong_usd - weak_usd;
        route.key = calibrate::key_of(self.routing, route.score, extra);
        acc.facts.weak_usd += weak_usd;
        acc.candidates.push(Candidate {
            seq,
            score: route.score,
            gain: score,
            extra_usd: extra,
        });
        (route, score)
    }

    /// The estimated cost of the item's weak call when the weak model draws `samples` extra
    /// samples in the same request (their completions are billed, the prompt once).
    pub fn weak_usd_with_samples(&self, text: &str, samples: u8) -> Decimal {
        let mut t = self.estimator.tokens(text);
        t.completion = t.completion.saturating_mul(1 + u32::from(samples));
        self.prices
            .price(self.weak_tier)
            .map_or(Decimal::ZERO, |p| estimate::cost(t, p))
    }

    /// Fresh inputs for a job.
    pub fn inputs(&self) -> PlanInputs {
        PlanInputs {
            facts: JobFacts {
                weak_quality: self.weak_quality,
                ..JobFacts::default()
            },
            ..PlanInputs::default()
        }
    }

    /// The plan of the accumulated items.
    ///
    /// # Errors
    /// A budget the job cannot meet, or a budget with an unpriced model.
    pub fn plan(&self, acc: &mut PlanInputs) -> Result<Plan, RouteError> {
        if matches!(self.routing, Routing::BudgetUsd { .. })
            && let Some(tier) = acc.unpriced.iter().next()
        {
            return Err(RouteError::Unpriced(format!(
                "model `{}` (tier `{tier}`)",
                self.prices.model(tier)
            )));
        }
        Ok(calibrate::plan(
            self.routing,
            &mut acc.candidates,
            &acc.facts,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rule;
    use std::str::FromStr;

    fn price(input: &str, output: &str) -> Price {
        Price {
            input_usd_per_mtok: Decimal::from_str(input).unwrap(),
            output_usd_per_mtok: Decimal::from_str(output).unwrap(),
        }
    }

    /// A stand-in for the router: longer texts score higher.
    fn score(item: &Item) -> f32 {
        item.text.len() as f32 / 100.0
    }

    #[test]
    fn a_chat_request_that_names_a_model_goes_to_its_tier_and_an_alias_is_routed() {
        use switchyard_proto::{ChatItem, ChatMessage};
        let prices = TierPrices::resolve([("weak", "small"), ("strong", "big")], |_| {
            Some(price("1", "1"))
        });
        let rules = RuleSet::compile(&[], &["weak", "strong"]).unwrap();
        let config = RouteConfig {
            weak_tier: "weak",
            strong_tier: "strong",
            local_tier: None,
            rules: &rules,
            generate_max_tokens: 512,
        };
        let task = Task::Chat {};
        let routing = Routing::StrongShare { value: 0.0 };
        let job = JobFacets {
            routing: &routing,
            task: &task,
            team: "t",
            project: "p",
        };
        let tiers = [("small", "weak"), ("big", "strong")]
            .map(|(m, t)| (m.to_owned(), t.to_owned()))
            .into_iter()
            .collect();
        let jr = JobRouter::new(&config, job, &prices, 0.6).with_model_tiers(tiers);
        let mut acc = jr.inputs();
        let chat = |model: &str| {
            let m = vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }];
            ChatItem::new(model, m, serde_json::Map::new()).to_text()
        };
        let (r, _) = jr.route(&Item::new("a", chat("big")), 0, 0.0, &mut acc);
        assert_eq!(
            (r.rule.as_deref(), r.tier.as_deref()),
            (Some(MODEL_RULE), Some("strong"))
        );
        // A model no tier runs goes to the weak tier, whose worker names it as not found.
        let (r, _) = jr.route(&Item::new("b", chat("nope")), 1, 0.0, &mut acc);
        assert_eq!(r.tier.as_deref(), Some("weak"));
        let (r, _) = jr.route(&Item::new("c", chat("switchyard:auto")), 2, 0.0, &mut acc);
        assert_eq!((r.rule, r.tier), (None, None));
        assert_eq!(acc.candidates.len(), 1);
    }

    #[test]
    fn pins_then_rules_then_policy() {
        let priced = |m: &str| match m {
            "small" => Some(price("0.2", "0.2")),
            "big" => Some(price("10", "30")),
            _ => None,
        };
        let tiers = [("weak", "small"), ("strong", "big"), ("local", "llama")];
        let prices = TierPrices::resolve(tiers, priced);
        let rules = RuleSet::compile(
            &[
                Rule {
                    name: "vip".into(),
                    keywords: vec!["vip".into()],
                    tier: Some("strong".into()),
                    ..Rule::default()
                },
                Rule {
                    name: "bump".into(),
                    keywords: vec!["bump".into()],
                    shift: Some(0.5),
                    ..Rule::default()
                },
            ],
            &["weak", "strong", "local"],
        )
        .unwrap();
        let config = RouteConfig {
            weak_tier: "weak",
            strong_tier: "strong",
            local_tier: Some("local"),
            rules: &rules,
            generate_max_tokens: 512,
        };
        let task = Task::Generate { instructions: None };
        let routing = Routing::StrongShare { value: 0.5 };
        let job = JobFacets {
            routing: &routing,
            task: &task,
            team: "t",
            project: "p",
        };
        let jr = JobRouter::new(&config, job, &prices, 0.6);
        let mut acc = jr.inputs();
        let route = |item: &Item, seq, acc: &mut PlanInputs| jr.route(item, seq, score(item), acc);
        let mut pinned = Item::new("a", "vip but local");
        pinned.sensitivity = Some("local_only".into());
        let (r, _) = route(&pinned, 0, &mut acc);
        assert_eq!(
            (r.rule.as_deref(), r.tier.as_deref()),
            (Some("sensitivity"), Some("local"))
        );
        let (r, _) = route(&Item::new("b", "a vip item"), 1, &mut acc);
        assert_eq!(
            (r.rule.as_deref(), r.tier.as_deref()),
            (Some("vip"), Some("strong"))
        );
        let (r, raw) = route(&Item::new("c", "bump"), 2, &mut acc);
        assert_eq!(r.rule.as_deref(), Some("bump"));
        assert!((r.score - raw - 0.5).abs() < 1e-6 && r.tier.is_none());
        let (r, _) = route(&Item::new("d", "plain text here"), 3, &mut acc);
        assert!(r.rule.is_none());
        assert!(r.est_strong_usd > r.est_weak_usd);
        assert_eq!(acc.candidates.len(), 2);
        assert_eq!(acc.facts.fixed_items, 2);
        assert_eq!(
            acc.unpriced.iter().collect::<Vec<_>>(),
            ["local"],
            "the pinned item's unpriced local model is noted"
        );
        let plan = jr.plan(&mut acc).unwrap();
        assert_eq!(plan.strong, 1, "the shifted item wins the one strong slot");
        assert_eq!(
            plan.expected_usd,
            acc.facts.fixed_usd
                + acc.facts.weak_usd
                + acc
                    .candidates
                    .iter()
                    .find(|c| c.seq == 2)
                    .unwrap()
                    .extra_usd
        );
        // A non-finite score counts as zero rather than poisoning the plan.
        let (r, raw) = jr.route(&Item::new("e", "nan"), 4, f32::NAN, &mut jr.inputs());
        assert_eq!((r.score, raw), (0.0, 0.0));
    }

    #[test]
    fn a_budget_with_an_unpriced_model_is_refused_naming_it() {
        let prices = TierPrices::resolve([("weak", "small"), ("strong", "big")], |m| {
            (m == "small").then(|| price("0.2", "0.2"))
        });
        let rules = RuleSet::compile(&[], &["weak", "strong"]).unwrap();
        let config = RouteConfig {
            weak_tier: "weak",
            strong_tier: "strong",
            local_tier: None,
            rules: &rules,
            generate_max_tokens: 512,
        };
        let task = Task::Generate { instructions: None };
        let budget = Routing::BudgetUsd {
            value: Decimal::from_str("1").unwrap(),
        };
        let job = JobFacets {
            routing: &budget,
            task: &task,
            team: "t",
            project: "p",
        };
        let jr = JobRouter::new(&config, job, &prices, 0.6);
        let mut acc = jr.inputs();
        jr.route(&Item::new("d", "plain"), 0, 0.3, &mut acc);
        let e = jr.plan(&mut acc).unwrap_err().to_string();
        assert!(e.contains("model `big` (tier `strong`)"), "{e}");
    }
}
