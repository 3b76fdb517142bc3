//! `--policy` on the command line: `strong-share=P`, `threshold=T`, `budget-usd=B`,
//! `quality=Q` (the routing rule, one of them), `shadow=F` (a sample of weak-routed items
//! also sent strong) and `audit=F` (a quality job's audit cap, as a share of the all-strong
//! cost), repeatable or comma-separated: `--policy quality=0.95,audit=0.05`.

use rust_decimal::Decimal;
use switchyard_proto::{Policy, Routing};

/// One `--policy` part.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyArg {
    Routing(Routing),
    Shadow(f64),
    Audit(f64),
}

/// What `--policy` accepts, for messages.
pub const EXPECTED: &str =
    "strong-share=P, threshold=T, budget-usd=USD, quality=Q, shadow=F or audit=F (comma-separated)";

/// Parses one part (clap's `value_parser`).
///
/// # Errors
/// A message naming what is wrong.
pub fn parse(s: &str) -> Result<PolicyArg, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected {EXPECTED}"))?;
    let v = v.trim();
    let number = || -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("`{v}` is not a number"))
    };
    let fraction = |what: &str| -> Result<f64, String> {
        let x = number()?;
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            Err(format!("{what} {x} is outside [0, 1]"))
        }
    };
    match k.trim() {
        "strong-share" | "strong_share" => Ok(PolicyArg::Routing(Routing::StrongShare {
            value: fraction("strong-share")?,
        })),
        "threshold" => Ok(PolicyArg::Routing(Routing::Threshold { value: number()? })),
        "budget-usd" | "budget_usd" => {
            let value: Decimal = v
                .trim_start_matches('$')
                .parse()
                .map_err(|_| format!("`{v}` is not a decimal amount of dollars"))?;
            if value.is_sign_negative() && !value.is_zero() {
                return Err(format!("budget-usd {value} is negative"));
            }
            Ok(PolicyArg::Routing(Routing::BudgetUsd { value }))
        }
        "quality" => {
            let q = number()?;
            if !(q > 0.0 && q <= 1.0) {
                return Err(format!(
                    "quality {q} is outside (0, 1] (a fraction of all-strong quality)"
                ));
            }
            Ok(PolicyArg::Routing(Routing::Quality { value: q }))
        }
        "shadow" => Ok(PolicyArg::Shadow(fraction("shadow")?)),
        "audit" => Ok(PolicyArg::Audit(fraction("audit")?)),
        other => Err(format!("unknown policy `{other}` (expected {EXPECTED})")),
    }
}

/// Applies parts to a policy: the last routing part wins, shadow sets the shadow fraction.
///
/// # Errors
/// Two different routing rules (`strong-share=0.2,budget-usd=5`): a job has one.
pub fn apply(parts: &[PolicyArg], policy: &mut Policy) -> Result<(), String> {
    let mut routing: Option<&Routing> = None;
    for p in parts {
        match p {
            PolicyArg::Routing(r) => {
                if let Some(prev) = routing
                    && std::mem::discriminant(prev) != std::mem::discriminant(r)
                {
                    return Err(format!(
                        "--policy names two routing rules ({} and {}); a job has one",
                        switchyard_core::calibrate::describe(prev),
                        switchyard_core::calibrate::describe(r)
                    ));
                }
                routing = Some(r);
                policy.routing = r.clone();
            }
            PolicyArg::Shadow(f) => policy.shadow = Some(*f),
            PolicyArg::Audit(f) => policy.audit = Some(*f),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn every_policy_parses_and_bad_ones_say_why() {
        assert_eq!(
            parse("budget-usd=12.50").unwrap(),
            PolicyArg::Routing(Routing::BudgetUsd {
                value: Decimal::from_str("12.50").unwrap()
            })
        );
        assert_eq!(
            parse("quality=0.95").unwrap(),
            PolicyArg::Routing(Routing::Quality { value: 0.95 })
        );
        assert_eq!(parse("shadow=0.1").unwrap(), PolicyArg::Shadow(0.1));
        assert_eq!(parse("audit=0.05").unwrap(), PolicyArg::Audit(0.05));
        assert!(parse("audit=1.5").unwrap_err().contains("outside"));
        assert!(parse("quality=0").unwrap_err().contains("outside"));
        assert!(parse("budget-usd=-1").unwrap_err().contains("negative"));
        assert!(parse("budget-usd=lots").unwrap_err().contains("decimal"));
        assert!(parse("shadow=2").unwrap_err().contains("outside"));
        assert!(parse("cheapest=1").unwrap_err().contains("unknown policy"));
        let mut p = Policy::default();
        apply(
            &[parse("quality=0.9").unwrap(), parse("shadow=0.2").unwrap()],
            &mut p,
        )
        .unwrap();
        assert_eq!(p.routing, Routing::Quality { value: 0.9 });
        assert_eq!(p.shadow, Some(0.2));
        apply(&[parse("audit=0.03").unwrap()], &mut p).unwrap();
        assert_eq!(p.audit, Some(0.03));
        let e = apply(
            &[
                parse("quality=0.9").unwrap(),
                parse("budget-usd=3").unwrap(),
            ],
            &mut p,
        )
        .unwrap_err();
        assert!(e.contains("two routing rules"), "{e}");
    }
}
