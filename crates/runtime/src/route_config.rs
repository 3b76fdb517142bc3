//! The configuration's side of route planning ([`switchyard_core::route`]): the tiers, rules
//! and token ceilings every job of a deployment is routed under, read the same way by the
//! dispatcher and by `switchyard quote`, so a quote is what a dispatch would do.

use std::collections::BTreeMap;

use switchyard_core::pricing::Price;
use switchyard_core::route::{RouteConfig, TierPrices};
use switchyard_core::rules::RuleSet;

use crate::Settings;

/// What a job's token estimates assume for `generate` when its weak model is not configured.
const FALLBACK_GENERATE_MAX_TOKENS: u32 = 512;

impl Settings {
    /// The routing configuration of a job with these per-tier model `overrides`, under the
    /// compiled `rules` (see [`Settings::routing_rules`]).
    pub fn route_config<'a>(
        &'a self,
        rules: &'a RuleSet,
        overrides: &BTreeMap<String, String>,
    ) -> RouteConfig<'a> {
        let ds = &self.dispatcher;
        let generate_max_tokens = self
            .model_for(&ds.weak_tier, overrides)
            .and_then(|m| self.models.get(m))
            .map_or(FALLBACK_GENERATE_MAX_TOKENS, |m| m.generate_max_tokens);
        RouteConfig {
            weak_tier: &ds.weak_tier,
            strong_tier: &ds.strong_tier,
            local_tier: self.local_tier(),
            rules,
            generate_max_tokens,
        }
    }

    /// The model of each configured tier for a job with these `overrides`: `(tier, model)`.
    pub fn tier_models<'a>(
        &'a self,
        overrides: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.tiers
            .keys()
            .filter_map(move |tier| Some((tier.as_str(), self.model_for(tier, overrides)?)))
    }

    /// The tier of every configured model (`model → tier`): where a chat request that names
    /// a model runs.
    pub fn model_tiers(&self) -> BTreeMap<String, String> {
        self.models
            .iter()
            .map(|(name, m)| (name.clone(), m.tier.clone()))
            .collect()
    }

    /// The job's models per tier priced by `price_of`.
    pub fn tier_prices(
        &self,
        overrides: &BTreeMap<String, String>,
        price_of: impl FnMut(&str) -> Option<Price>,
    ) -> TierPrices {
        TierPrices::resolve(self.tier_models(overrides), price_of)
    }
}
