//! UTC calendar periods without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

const DAY_MS: i64 = 86_400_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 (UTC).
pub fn day(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

pub fn day_start_ms(ms: i64) -> i64 {
    day(ms) * DAY_MS
}

/// (year, month) of a day number (Howard Hinnant's civil_from_days).
pub fn year_month(day: i64) -> (i64, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m)
}

/// Day number of the first of a month (days_from_civil).
pub fn month_start_day(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn month_start_ms(ms: i64) -> i64 {
    let (y, m) = year_month(day(ms));
    month_start_day(y, m) * DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods() {
        // 2026-11-22T12:00:00Z
        let ms = 1_795_348_800_000;
        assert_eq!(year_month(day(ms)), (2026, 11));
        assert_eq!(month_start_ms(ms), 1_793_491_200_000); // 2026-11-01
        assert_eq!(day_start_ms(ms), 1_795_305_600_000); // 2026-11-22
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(month_start_day(2024, 3) - month_start_day(2024, 2), 29);
        assert_eq!(year_month(month_start_day(2000, 12)), (2000, 12));
    }
}
