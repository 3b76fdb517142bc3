//! How money leaves the store: exact decimal strings, never floats. Trailing zeros are
//! dropped (`0.00062000` → `0.00062`), which changes no value; nothing is ever rounded.

use rust_decimal::Decimal;

/// The exact decimal string of an amount.
pub fn exact(d: Decimal) -> String {
    let n = d.normalize();
    // `-0` can come out of a sum of a call and its reversal: it is zero.
    if n.is_zero() {
        "0".to_owned()
    } else {
        n.to_string()
    }
}

/// Serializes an amount as its exact decimal string (for `#[serde(serialize_with)]`).
///
/// # Errors
/// The serializer's.
pub fn ser<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&exact(*d))
}

/// As [`ser`], for optional amounts (`null` when absent).
///
/// # Errors
/// The serializer's.
pub fn ser_opt<S: serde::Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&exact(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn amounts_print_exactly_without_trailing_zeros() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(exact(d("0.00062000")), "0.00062");
        assert_eq!(exact(d("-0.000")), "0");
        assert_eq!(exact(d("12.3400000000000000001")), "12.3400000000000000001");
    }
}
