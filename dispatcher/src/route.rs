//! Where each item of a job goes, and why: the pure part of routing, shared by the
//! dispatcher, `switchyard quote` and `router explain --file`, so a quote is exactly what a
//! dispatch would do.
//!
//! In the documented order (see `switchyard_core::rules`):
//! 1. a `local_only` item is pinned to the local tier;
//! 2. otherwise the first matching routing rule forces a tier or shifts the learned score;
//! 3. every item not pinned or forced is a candidate of the job's policy, with its (shifted)
//!    score, its predicted gain (the raw score) and its estimated extra cost on the strong
//!    model. [`PlanInputs::plan`] turns the candidates into one cut
//!    (`switchyard_core::calibrate`).
//!
//! Every item is scored by the router, pinned or not, so audits and explanations can show
//! the score of items that a pin or rule decided.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use switchyard_core::calibrate::{self, Candidate, JobFacts, Plan, PlanError};
use switchyard_core::estimate;
use switchyard_core::pricing::Price;
use switchyard_core::rules::{Effect, ItemFacts, RuleSet};
use switchyard_core::validate;
use switchyard_proto::{Item, Routing, Task};
use switchyard_router::Router;
use switchyard_router::prior::ASSUMED_WEAK_QUALITY;
use switchyard_runtime::Settings;
use switchyard_store::routing::ItemRoute;

/// The rule name stored for items pinned by their sensitivity.
pub const SENSITIVITY_RULE: &str = "sensitivity";

/// Per tier, the job's model and its price (`None`: the model has no known price).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierPrices(pub BTreeMap<String, (String, Option<Price>)>);

impl TierPrices {
    /// The models a job uses per tier (its overrides applied) priced by `price_of`.
    pub fn resolve(
        settings: &Settings,
        overrides: &BTreeMap<String, String>,
        mut price_of: impl FnMut(&str) -> Option<Price>,
    ) -> Self {
        let mut out = BTreeMap::new();
        for tier in settings.tiers.keys() {
            if let Some(model) = settings.model_for(tier, overrides) {
                let price = price_of(model);
                out.insert(tier.clone(), (model.to_owned(), price));
            }
        }
        Self(out)
    }

    fn price(&self, tier: &str) -> Option<&Price> {
        self.0.get(tier).and_then(|(_, p)| p.as_ref())
    }

    fn model(&self, tier: &str) -> &str {
        self.0.get(tier).map_or("?", |(m, _)| m.as_str())
    }
}

/// Everything that decides the items of one job.
pub struct JobRouter<'a> {
    pub routing: &'a Routing,
    pub task: &'a Task,
    pub team: &'a str,
    pub project: &'a str,
    pub rules: &'a RuleSet,
    pub router: &'a dyn Router,
    pub weak_tier: &'a str,
    pub strong_tier: &'a str,
    pub local_tier: Option<&'a str>,
    pub prices: &'a TierPrices,
    /// How many tokens an item of this job is expected to use.
    pub estimator: estimate::Estimator,
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

impl JobRouter<'_> {
    /// The weak model's expected quality on this job's task kind.
    pub fn weak_quality(&self) -> f64 {
        self.router
            .weak_quality(self.task.kind())
            .unwrap_or(ASSUMED_WEAK_QUALITY)
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

    /// Decides one item: scores it, applies the pin or the first matching rule, and either
    /// records it as fixed or adds it to the policy's candidates. Returns what is stored with
    /// the item and its raw router score.
    pub fn route(&self, item: &Item, seq: i64, acc: &mut PlanInputs) -> (ItemRoute, f32) {
        let score = self.router.score(&item.text, self.task.kind());
        self.route_scored(item, seq, score, acc)
    }

    /// [`JobRouter::route`] with the router's raw score already known (pass 2 of a dispatch
    /// keeps pass 1's scores rather than scoring every item twice).
    pub fn route_scored(
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
        let forced = if validate::is_local_only(item) {
            route.rule = Some(SENSITIVITY_RULE.to_owned());
            self.local_tier.map(str::to_owned)
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
                weak_quality: self.weak_quality(),
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
    use std::str::FromStr;
    use switchyard_core::rules::Rule;
    use switchyard_proto::TaskKind;

    #[derive(Debug)]
    struct Fixed;
    impl Router for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn score(&self, text: &str, _: TaskKind) -> f32 {
            text.len() as f32 / 100.0
        }
        fn weak_quality(&self, _: TaskKind) -> Option<f64> {
            Some(0.6)
        }
    }

    #[test]
    fn pins_then_rules_then_policy() {
        let settings = Settings::demo();
        let prices = TierPrices::resolve(&settings, &BTreeMap::new(), |m| settings.price_of(m));
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
        let task = Task::Generate { instructions: None };
        let routing = Routing::StrongShare { value: 0.5 };
        let jr = JobRouter {
            routing: &routing,
            task: &task,
            team: "t",
            project: "p",
            rules: &rules,
            router: &Fixed,
            weak_tier: "weak",
            strong_tier: "strong",
            local_tier: Some("local"),
            prices: &prices,
            estimator: estimate::Estimator::new(&task, 512),
        };
        let mut acc = jr.inputs();
        let mut pinned = Item::new("a", "vip but local");
        pinned.sensitivity = Some("local_only".into());
        let (r, _) = jr.route(&pinned, 0, &mut acc);
        assert_eq!(
            (r.rule.as_deref(), r.tier.as_deref()),
            (Some("sensitivity"), Some("local"))
        );
        let (r, _) = jr.route(&Item::new("b", "a vip item"), 1, &mut acc);
        assert_eq!(
            (r.rule.as_deref(), r.tier.as_deref()),
            (Some("vip"), Some("strong"))
        );
        let (r, raw) = jr.route(&Item::new("c", "bump"), 2, &mut acc);
        assert_eq!(r.rule.as_deref(), Some("bump"));
        assert!((r.score - raw - 0.5).abs() < 1e-6 && r.tier.is_none());
        let (r, _) = jr.route(&Item::new("d", "plain text here"), 3, &mut acc);
        assert!(r.rule.is_none());
        assert!(r.est_strong_usd > r.est_weak_usd);
        assert_eq!(acc.candidates.len(), 2);
        assert_eq!(acc.facts.fixed_items, 2);
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
        // A budget with an unpriced model is refused.
        let mut bare = settings.clone();
        if let Some(m) = bare.models.get_mut("gpt-4-1106-preview") {
            m.input_usd_per_mtok = None;
            m.output_usd_per_mtok = None;
        }
        let prices = TierPrices::resolve(&bare, &BTreeMap::new(), |m| bare.price_of(m));
        let budget = Routing::BudgetUsd {
            value: Decimal::from_str("1").unwrap(),
        };
        let jr = JobRouter {
            routing: &budget,
            prices: &prices,
            ..jr
        };
        let mut acc = jr.inputs();
        jr.route(&Item::new("d", "plain"), 0, &mut acc);
        let e = jr.plan(&mut acc).unwrap_err().to_string();
        assert!(e.contains("gpt-4-1106-preview"), "{e}");
    }
}
