//! The HTML of every page: escaping, URL encoding, the shared layout and
//! the few formats (times, gaps, JSON) the pages use.
//!
//! Every piece of data that did not come from this file (an instance id, a
//! queue name, a payload, an error message, a filter typed by the operator)
//! goes through [`escape`] before it is written into a page, and through
//! [`url_encode`] before it is written into a URL. The pages build their
//! HTML with `format!` on these two and on nothing else.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// `text` with the five characters that mean something in HTML (in text
/// and in quoted attribute values) replaced by their entities: the one
/// escaping function of the dashboard.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// `text` percent-encoded for a URL path segment or query value: every
/// byte but the unreserved ones of RFC 3986. The result holds no character
/// HTML treats specially, so it may go into an attribute as it is.
pub(crate) fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// A query string (`?a=1&b=2`, already escaped for an attribute) of the
/// pairs whose value is not empty; empty when none is.
pub(crate) fn query_string(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{}={}", url_encode(name), url_encode(value)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&amp;"))
    }
}

/// A JSON value pretty-printed and escaped, for a `<pre>`.
pub(crate) fn json(value: &serde_json::Value) -> String {
    escape(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
}

/// A time as `YYYY-MM-DD HH:MM:SS.mmm` in UTC, computed here rather than
/// by a date library: the dashboard needs this one format only.
pub(crate) fn time(at: SystemTime) -> String {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let seconds = since_epoch.as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Year, month and day of the `days`-th day after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact for every day of the proleptic
/// Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * month_index + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    })
    .unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration as people read it: `850 ms`, `12.3 s`, `4 min 10 s`, `2 h 5 min`.
pub(crate) fn gap(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis} ms")
    } else if millis < 60_000 {
        format!("{:.1} s", duration.as_secs_f64())
    } else if millis < 3_600_000 {
        format!("{} min {} s", millis / 60_000, millis / 1000 % 60)
    } else {
        format!("{} h {} min", millis / 3_600_000, millis / 60_000 % 60)
    }
}

/// The time from `earlier` to `later`, `-` when `later` is before it.
pub(crate) fn gap_between(earlier: SystemTime, later: SystemTime) -> String {
    later
        .duration_since(earlier)
        .map(gap)
        .unwrap_or_else(|_| "-".to_string())
}

/// The inline style sheet: no CDN, no file to serve.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}\
header{background:#1d3557;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.5rem;align-items:baseline}\
header a{color:#fff;text-decoration:none}header strong{font-size:1.1rem}\
main{padding:1rem 1.2rem}table{border-collapse:collapse;background:#fff;margin:.5rem 0 1.2rem}\
th,td{border:1px solid #d5d9de;padding:.3rem .6rem;text-align:left;vertical-align:top;font-size:.9rem}\
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.stuck{background:#fff1e6}tr.stuck td:first-child{border-left:4px solid #e76f51}\
pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:.8rem;max-width:60rem}\
.error{color:#b00020}.notice{background:#e9f5ec;border:1px solid #9ccc65;padding:.5rem}\
.muted{color:#66707a}form.filters input,form.filters select{margin-right:.6rem}\
form.action{background:#fff;border:1px solid #d5d9de;padding:.6rem;margin:.4rem 0;max-width:40rem}\
textarea{width:100%;font-family:monospace}";

/// A whole page: `title` (escaped here) over `body` (HTML already built
/// from escaped parts), with the navigation to the pages under `base`.
pub(crate) fn layout(base: &str, title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · pgwake</title><style>{STYLE}</style></head><body>\
         <header><strong>pgwake</strong><a href=\"{base}/\">Overview</a>\
         <a href=\"{base}/instances\">Instances</a></header><main><h1>{title}</h1>{body}</main>\
         </body></html>",
        title = escape(title),
        base = escape(base),
    )
}

/// A page of its own for an error: no navigation, since an error response
/// does not know where the dashboard is mounted.
pub(crate) fn error_page(title: &str, message: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · pgwake</title><style>{STYLE}</style></head><body>\
         <header><strong>pgwake</strong></header><main><h1>{title}</h1>\
         <p class=\"error\">{message}</p><p>Go back and try again.</p></main></body></html>",
        title = escape(title),
        message = escape(message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_turns_markup_into_text() {
        assert_eq!(
            escape("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn url_encode_keeps_only_unreserved_bytes() {
        assert_eq!(url_encode("a b/é<"), "a%20b%2F%C3%A9%3C");
        assert_eq!(url_encode("order-7_x.y~"), "order-7_x.y~");
    }

    #[test]
    fn time_is_utc_calendar_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(time(at), "2023-11-14 22:13:20.123");
        assert_eq!(time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let leap_day = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(time(leap_day), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn gaps_read_in_the_largest_sensible_unit() {
        assert_eq!(gap(Duration::from_millis(850)), "850 ms");
        assert_eq!(gap(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(gap(Duration::from_secs(250)), "4 min 10 s");
        assert_eq!(gap(Duration::from_secs(7500)), "2 h 5 min");
    }

    #[test]
    fn query_string_drops_empty_values() {
        assert_eq!(
            query_string(&[("state", "active"), ("queue", ""), ("prefix", "a&b")]),
            "?state=active&amp;prefix=a%26b"
        );
        assert_eq!(query_string(&[("queue", "")]), "");
    }
}
