//! Money, exactly. Amounts are integer femto-dollars (1e-15 USD): prices are
//! held as nano-dollars per million tokens, so `tokens * price` is exact and
//! nothing is accumulated in floating point.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

/// An amount of US dollars, exact to 1e-15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i128);

const FEMTO_PER_NANO: i128 = 1_000_000;
const NANO_PER_USD: i128 = 1_000_000_000;

impl Usd {
    pub const ZERO: Usd = Usd(0);

    /// From a configured dollar figure, rounded to the nano-dollar.
    pub fn from_dollars(dollars: f64) -> Usd {
        Usd(((dollars * 1e9).round() as i128) * FEMTO_PER_NANO)
    }

    pub fn from_femto(femto: i128) -> Usd {
        Usd(femto)
    }

    pub fn femto(self) -> i128 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Rounded to whole nano-dollars, half away from zero.
    pub fn nanos(self) -> i128 {
        let half = FEMTO_PER_NANO / 2;
        if self.0 >= 0 {
            self.0.saturating_add(half) / FEMTO_PER_NANO
        } else {
            self.0.saturating_sub(half) / FEMTO_PER_NANO
        }
    }

    /// Whole nano-dollars as the ledger and budgets count them, saturated.
    pub fn nanos_i64(self) -> i64 {
        i64::try_from(self.nanos()).unwrap_or(if self.0 < 0 { i64::MIN } else { i64::MAX })
    }

    /// As a JSON number rounded to 9 decimals.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::Number::from_f64(self.nanos() as f64 / 1e9)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e15
    }
}

/// Plain decimal dollars, up to 9 decimals, trailing zeros trimmed:
/// `0.0000275`, `1.5`, `0`. Never exponent notation.
impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plain().as_str())
    }
}

/// A `Usd` in its plain decimal form, written without allocating (it goes
/// into two response headers per request).
pub struct Plain {
    buf: [u8; 48],
    start: usize,
}

impl Plain {
    pub fn as_str(&self) -> &str {
        // only ASCII digits, '.' and '-' are ever written
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

impl Usd {
    /// The plain decimal form (see `Display`).
    pub fn plain(self) -> Plain {
        let nanos = self.nanos();
        let abs = nanos.unsigned_abs();
        let (mut whole, mut frac) = (abs / NANO_PER_USD as u128, abs % NANO_PER_USD as u128);
        let mut p = Plain {
            buf: [0; 48],
            start: 48,
        };
        let push = |p: &mut Plain, b: u8| {
            p.start -= 1;
            p.buf[p.start] = b;
        };
        if frac != 0 {
            let mut digits = 9;
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            for _ in 0..digits {
                push(&mut p, b'0' + (frac % 10) as u8);
                frac /= 10;
            }
            push(&mut p, b'.');
        }
        loop {
            push(&mut p, b'0' + (whole % 10) as u8);
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        if nanos < 0 {
            push(&mut p, b'-');
        }
        p
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, rhs: Usd) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, rhs: Usd) -> Usd {
        Usd(self.0.saturating_sub(rhs.0))
    }
}

impl Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Add::add)
    }
}

/// A model's prices, in nano-dollars per million tokens (per call for
/// `per_request`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub per_request: u64,
}

impl Prices {
    /// A model with any non-zero price is paid.
    pub fn is_free(&self) -> bool {
        self.input == 0
            && self.output == 0
            && self.cache_read == 0
            && self.cache_write == 0
            && self.per_request == 0
    }
}

/// Token counts in the OpenAI sense: `prompt` includes `cached` (cache reads)
/// and `cache_write` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cache_write: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.completion = self.completion.saturating_add(other.completion);
        self.cached = self.cached.saturating_add(other.cached);
        self.cache_write = self.cache_write.saturating_add(other.cache_write);
    }
}

/// The price of one successful call with this usage. Saturates rather than
/// wraps, whatever counts an upstream reported.
pub fn cost(prices: &Prices, usage: &Usage) -> Usd {
    let cached = usage.cached.min(usage.prompt);
    let written = usage.cache_write.min(usage.prompt - cached);
    let plain = usage.prompt - cached - written;
    let times = |tokens: u64, price: u64| i128::from(tokens).saturating_mul(i128::from(price));
    // nano-dollars per Mtok times tokens = 1e-9 / 1e6 dollars = femto-dollars.
    let femto = [
        times(plain, prices.input),
        times(cached, prices.cache_read),
        times(written, prices.cache_write),
        times(usage.completion, prices.output),
        times(prices.per_request, FEMTO_PER_NANO as u64),
    ]
    .into_iter()
    .fold(0i128, i128::saturating_add);
    Usd(femto)
}

/// Usage guessed from text lengths (about four characters a token), for an
/// answer whose upstream reported none, or absurd counts.
pub fn estimate(prompt_chars: usize, completion_chars: usize) -> Usage {
    Usage {
        prompt: (prompt_chars as u64).div_ceil(4),
        completion: (completion_chars as u64).div_ceil(4),
        ..Usage::default()
    }
}

/// The price of tokens billed on a call that did not serve the request: no
/// per-request fee, only what the provider bills for tokens.
pub fn token_cost(prices: &Prices, usage: &Usage) -> Usd {
    let no_fee = Prices {
        per_request: 0,
        ..*prices
    };
    cost(&no_fee, usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(input: f64, output: f64) -> Prices {
        Prices {
            input: (input * 1e9) as u64,
            output: (output * 1e9) as u64,
            cache_read: (input * 1e9) as u64,
            cache_write: (input * 1e9) as u64,
            per_request: 0,
        }
    }

    #[test]
    fn formats_plain_decimals() {
        assert_eq!(Usd::from_femto(27_500_000_000).to_string(), "0.0000275");
        assert_eq!(Usd::ZERO.to_string(), "0");
        assert_eq!(Usd::from_dollars(1.5).to_string(), "1.5");
        assert_eq!(Usd::from_dollars(-0.25).to_string(), "-0.25");
        // half a nano-dollar rounds away from zero
        assert_eq!(Usd::from_femto(500_000).to_string(), "0.000000001");
        assert_eq!(Usd::from_femto(-500_000).to_string(), "-0.000000001");
        assert_eq!(Usd::from_femto(499_999).to_string(), "0");
        assert_eq!(
            Usd::from_dollars(12_345.000_000_7).to_string(),
            "12345.0000007"
        );
        assert_eq!(Usd::from_dollars(-3.0).to_string(), "-3");
        assert_eq!(Usd::from_dollars(0.1).to_string(), "0.1");
        // near the largest amount there is: 24 whole digits, 9 decimals, a sign
        assert_eq!(
            Usd::from_femto(-(10_i128.pow(38)) - 1_234_567_000_000).to_string(),
            "-100000000000000000000000.001234567"
        );
    }

    #[test]
    fn prices_tokens_exactly() {
        // kimi-k2: 0.60 in, 2.50 out per Mtok; 10 in, 9 out
        let p = prices(0.60, 2.50);
        let u = Usage {
            prompt: 10,
            completion: 9,
            ..Usage::default()
        };
        assert_eq!(cost(&p, &u).to_string(), "0.0000285");
        // summing many small costs stays exact
        let total: Usd = (0..1000).map(|_| cost(&p, &u)).sum();
        assert_eq!(total.to_string(), "0.0285");
    }

    #[test]
    fn cached_tokens_use_cache_read_price() {
        let p = Prices {
            input: 1_000_000_000,
            output: 0,
            cache_read: 100_000_000,
            cache_write: 1_000_000_000,
            per_request: 1_000,
        };
        let u = Usage {
            prompt: 1_000_000,
            completion: 0,
            cached: 500_000,
            cache_write: 0,
        };
        // 0.5 Mtok at $1 + 0.5 Mtok at $0.1 + $0.000001 per request
        assert_eq!(cost(&p, &u).to_string(), "0.550001");
        assert_eq!(token_cost(&p, &u).to_string(), "0.55");
    }

    #[test]
    fn money_saturates_instead_of_wrapping() {
        let p = prices(1000.0, 1000.0);
        let u = Usage {
            prompt: u64::MAX,
            completion: u64::MAX,
            ..Usage::default()
        };
        assert!(cost(&p, &u) > Usd::ZERO);
        let huge = Usd::from_femto(i128::MAX / 2 + 1);
        assert_eq!(huge + huge, Usd::from_femto(i128::MAX));
        assert_eq!(Usd::from_femto(i128::MAX).nanos_i64(), i64::MAX);
        assert_eq!(
            Usd::from_femto(i128::MIN) - huge,
            Usd::from_femto(i128::MIN)
        );
    }

    #[test]
    fn free_means_every_price_zero() {
        assert!(Prices::default().is_free());
        let fee_only = Prices {
            per_request: 1,
            ..Prices::default()
        };
        assert!(!fee_only.is_free());
    }
}
