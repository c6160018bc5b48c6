//! Money is an integer count of minor units with a currency, never a float.
//! Every rounding rule used for tax and cash is here, explicit and tested.

/// Errors of parsing and computing money.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("'{0}' is not a price: write a decimal number such as 4.50")]
    Malformed(String),
    #[error("'{input}' has more than {exponent} decimal places for {currency}")]
    TooPrecise { input: String, currency: String, exponent: u32 },
    #[error("'{0}' is negative; prices and amounts must be zero or more")]
    Negative(String),
    #[error("'{0}' is too large")]
    TooLarge(String),
    #[error("unknown currency '{0}': use an ISO 4217 code such as EUR, USD, GBP, JPY")]
    UnknownCurrency(String),
    #[error("'{0}' is not a tax rate: write a percentage such as 20 or 5.5")]
    BadRate(String),
}

/// An ISO 4217 currency and its number of decimal places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency {
    code: [u8; 3],
    exponent: u32,
}

const CURRENCIES: &[(&str, u32)] = &[
    ("AUD", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("USD", 2),
    ("ZAR", 2),
    ("BHD", 3),
    ("KWD", 3),
];

impl Currency {
    /// Looks a currency up by its ISO code (case-insensitive).
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|(c, e)| Currency { code: c.as_bytes().try_into().expect("3 bytes"), exponent: *e })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_string()))
    }

    /// The ISO code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("ascii")
    }

    /// Decimal places of the minor unit.
    pub fn exponent(&self) -> u32 {
        self.exponent
    }

    /// Parses a decimal string ("4.5", "4.50", "12") into minor units.
    /// Errors never quote a long run of digits: it may be a mistyped card
    /// number.
    /// Negative values, exponents and more decimals than the currency has
    /// are refused rather than rounded, so a typo never becomes a price.
    pub fn parse_minor(&self, raw: &str) -> Result<i64, MoneyError> {
        let s = raw.trim();
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        let input = if digits >= 12 { "that number" } else { raw };
        if s.starts_with('-') {
            return Err(MoneyError::Negative(input.to_string()));
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty())
            || !digits_ok(int)
            || !digits_ok(frac)
            || (s.contains('.') && frac.is_empty())
        {
            return Err(MoneyError::Malformed(input.to_string()));
        }
        if frac.len() as u32 > self.exponent {
            return Err(MoneyError::TooPrecise {
                input: input.to_string(),
                currency: self.code().to_string(),
                exponent: self.exponent,
            });
        }
        let too_large = || MoneyError::TooLarge(input.to_string());
        let int_value: i64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| too_large())? };
        let mut frac_value: i64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| too_large())? };
        for _ in frac.len() as u32..self.exponent {
            frac_value *= 10;
        }
        let scale = 10i64.pow(self.exponent);
        let minor = int_value.checked_mul(scale).and_then(|v| v.checked_add(frac_value)).ok_or_else(too_large)?;
        // A cap well below i64::MAX keeps every later sum and product safe.
        if minor > MINOR_MAX {
            return Err(too_large());
        }
        Ok(minor)
    }

    /// Formats minor units as a decimal string with the currency's places.
    pub fn format_minor(&self, minor: i64) -> String {
        if self.exponent == 0 {
            return minor.to_string();
        }
        let scale = 10i64.pow(self.exponent);
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        format!("{sign}{}.{:0width$}", abs / scale as u64, abs % scale as u64, width = self.exponent as usize)
    }

    /// Formats with the code, as printed on receipts: "EUR 4.50".
    pub fn display(&self, minor: i64) -> String {
        format!("{} {}", self.code(), self.format_minor(minor))
    }
}

/// The largest amount accepted as input, in minor units (10^13).
pub const MINOR_MAX: i64 = 10_000_000_000_000;

/// A tax rate in basis points: 2000 is 20 %, 550 is 5.5 %.
pub type RateBp = i64;

/// Parses a percentage ("20", "5.5", "7.75%") into basis points.
pub fn parse_rate_bp(input: &str) -> Result<RateBp, MoneyError> {
    let s = input.trim().trim_end_matches('%');
    let pct = Currency { code: *b"PCT", exponent: 2 };
    let bp = pct.parse_minor(s).map_err(|_| MoneyError::BadRate(input.to_string()))?;
    if bp > 10_000 {
        return Err(MoneyError::BadRate(input.to_string()));
    }
    Ok(bp)
}

/// Formats basis points as a percentage ("20%", "5.5%").
pub fn format_rate_bp(bp: RateBp) -> String {
    let whole = bp / 100;
    let frac = bp % 100;
    if frac == 0 {
        format!("{whole}%")
    } else if frac % 10 == 0 {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

/// Divides and rounds half away from zero. This is the one rounding rule
/// for tax amounts and proportional splits.
pub fn div_round_half_up(numerator: i128, denominator: i128) -> i64 {
    assert!(denominator > 0, "denominator must be positive");
    let q = numerator / denominator;
    let r = numerator % denominator;
    let rounded = if 2 * r.abs() >= denominator { q + numerator.signum() } else { q };
    rounded as i64
}

/// Tax and net of a line whose gross (tax-inclusive) amount is known.
/// Tax = round_half_up(gross * rate / (1 + rate)); net = gross - tax.
pub fn tax_from_gross(gross_minor: i64, rate_bp: RateBp) -> (i64, i64) {
    let tax = div_round_half_up(gross_minor as i128 * rate_bp as i128, 10_000 + rate_bp as i128);
    (gross_minor - tax, tax)
}

/// Tax and gross of a line whose net (tax-exclusive) amount is known.
/// Tax = round_half_up(net * rate); gross = net + tax.
pub fn tax_from_net(net_minor: i64, rate_bp: RateBp) -> (i64, i64) {
    let tax = div_round_half_up(net_minor as i128 * rate_bp as i128, 10_000);
    (tax, net_minor + tax)
}

/// Rounds an amount due in cash to the nearest multiple of `step_minor`
/// (half up), as shops without small coins do. A step of 0 or 1 leaves it.
pub fn round_cash(amount_minor: i64, step_minor: i64) -> i64 {
    if step_minor <= 1 {
        return amount_minor;
    }
    div_round_half_up(amount_minor as i128, step_minor as i128) * step_minor
}

/// How a percentage discount of `bp` applies to `amount_minor`.
pub fn percent_of(amount_minor: i64, bp: i64) -> i64 {
    div_round_half_up(amount_minor as i128 * bp as i128, 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("eur").unwrap()
    }

    #[test]
    fn parses_decimal_strings_exactly() {
        let cases = [("4.5", 450), ("4.50", 450), ("12", 1200), ("0.01", 1), (".5", 50), ("  3.00 ", 300), ("0", 0)];
        for (input, want) in cases {
            assert_eq!(eur().parse_minor(input), Ok(want), "{input}");
        }
        assert_eq!(Currency::parse("JPY").unwrap().parse_minor("120"), Ok(120));
        assert_eq!(Currency::parse("KWD").unwrap().parse_minor("1.234"), Ok(1234));
    }

    #[test]
    fn refuses_malformed_prices() {
        for bad in ["", ".", "4.", "abc", "1e3", "4,50", "1.2.3", "+4", "NaN", "4.5x"] {
            assert!(matches!(eur().parse_minor(bad), Err(MoneyError::Malformed(_))), "{bad}");
        }
        assert!(matches!(eur().parse_minor("-1"), Err(MoneyError::Negative(_))));
        assert!(matches!(eur().parse_minor("4.505"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(Currency::parse("JPY").unwrap().parse_minor("1.5"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(eur().parse_minor("99999999999999999999"), Err(MoneyError::TooLarge(_))));
        assert!(matches!(eur().parse_minor("100000000000.01"), Err(MoneyError::TooLarge(_))));
        assert!(Currency::parse("XYZ").is_err());
    }

    #[test]
    fn formats_minor_units() {
        assert_eq!(eur().format_minor(450), "4.50");
        assert_eq!(eur().format_minor(-5), "-0.05");
        assert_eq!(eur().display(123456), "EUR 1234.56");
        assert_eq!(Currency::parse("JPY").unwrap().format_minor(120), "120");
        assert_eq!(Currency::parse("BHD").unwrap().format_minor(1005), "1.005");
    }

    #[test]
    fn rates_parse_as_basis_points() {
        assert_eq!(parse_rate_bp("20"), Ok(2000));
        assert_eq!(parse_rate_bp("5.5%"), Ok(550));
        assert_eq!(parse_rate_bp("7.75"), Ok(775));
        assert!(parse_rate_bp("101").is_err());
        assert!(parse_rate_bp("x").is_err());
        assert_eq!(format_rate_bp(2000), "20%");
        assert_eq!(format_rate_bp(550), "5.5%");
        assert_eq!(format_rate_bp(775), "7.75%");
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(div_round_half_up(5, 10), 1);
        assert_eq!(div_round_half_up(4, 10), 0);
        assert_eq!(div_round_half_up(15, 10), 2);
        assert_eq!(div_round_half_up(-5, 10), -1);
        assert_eq!(div_round_half_up(-4, 10), 0);
    }

    #[test]
    fn tax_rules_are_explicit() {
        // 12.00 gross at 20 % inclusive: 2.00 tax, 10.00 net.
        assert_eq!(tax_from_gross(1200, 2000), (1000, 200));
        // 1.00 gross at 20 %: 16.666.. -> 17 tax (half up), 83 net.
        assert_eq!(tax_from_gross(100, 2000), (83, 17));
        // 0.99 net at 5.5 %: 5.445 -> 5 tax, 1.04 gross.
        assert_eq!(tax_from_net(99, 550), (5, 104));
        // 10.10 net at 5 %: 0.505 -> 0.51 (half up), 10.61 gross.
        assert_eq!(tax_from_net(1010, 500), (51, 1061));
        // Zero-rated lines carry no tax.
        assert_eq!(tax_from_gross(1234, 0), (1234, 0));
        // Refund lines are negative and round symmetrically.
        assert_eq!(tax_from_gross(-100, 2000), (-83, -17));
    }

    #[test]
    fn cash_rounding_uses_the_step() {
        assert_eq!(round_cash(1232, 5), 1230);
        assert_eq!(round_cash(1233, 5), 1235);
        assert_eq!(round_cash(1237, 5), 1235);
        assert_eq!(round_cash(1238, 5), 1240);
        assert_eq!(round_cash(1238, 0), 1238);
        assert_eq!(round_cash(1249, 10), 1250);
        assert_eq!(percent_of(1999, 1000), 200);
    }
}
