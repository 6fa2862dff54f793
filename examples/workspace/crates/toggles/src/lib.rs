//! A library whose behaviour depends on which features were unified onto it.

/// The features this copy of the crate was compiled with, in a fixed order.
pub fn enabled() -> Vec<&'static str> {
    let mut on = Vec::new();
    if cfg!(feature = "fast") {
        on.push("fast");
    }
    if cfg!(feature = "fancy") {
        on.push("fancy");
    }
    if cfg!(feature = "extra") {
        on.push("extra");
    }
    on
}

/// Sum of 1..=n: a loop without `fast`, the closed form with it.
#[cfg(feature = "fast")]
pub fn sum_to(n: u64) -> u64 {
    n * (n + 1) / 2
}

#[cfg(not(feature = "fast"))]
pub fn sum_to(n: u64) -> u64 {
    (1..=n).sum()
}

/// `fancy` decorates, `extra` decorates more.
pub fn decorate(text: &str) -> String {
    #[cfg(feature = "extra")]
    return format!("<<*{text}*>>");
    #[cfg(all(feature = "fancy", not(feature = "extra")))]
    return format!("*{text}*");
    #[cfg(not(feature = "fancy"))]
    return text.to_string();
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_agree() {
        assert_eq!(super::sum_to(100), 5050);
    }
}
