//! Takes the options pgwake reads itself out of a connection string before
//! tokio-postgres parses the rest: tokio-postgres rejects `sslrootcert`,
//! `sslcert`, `sslkey` and `sslsni` as unknown, knows `sslmode` only up to
//! `require`, and cannot tell a `target_session_attrs` left at its default
//! from one set to `any`.
//!
//! Both of libpq's forms are handled, each as tokio-postgres reads it:
//! `postgres://...?key=value&...` (percent-encoded) and `key=value key='a b'`
//! (single quotes, backslash escapes).

/// The options pgwake reads itself; every other key stays for tokio-postgres.
const OWN_KEYS: &[&str] = &[
    "target_session_attrs",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslsni",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
];

/// A connection string without pgwake's own options, and those options in
/// order (a later one overrides an earlier one, as in libpq).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SplitOptions {
    pub(super) rest: String,
    pub(super) own: Vec<(String, String)>,
}

/// Splits `url`; the error names what cannot be read (never the URL itself,
/// which may hold a password).
pub(super) fn split_own_options(url: &str) -> Result<SplitOptions, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        split_key_values(url)
    }
}

fn split_url(url: &str) -> Result<SplitOptions, String> {
    let Some(query_start) = url.find('?') else {
        return Ok(SplitOptions {
            rest: url.to_string(),
            own: Vec::new(),
        });
    };
    let (base, query) = (&url[..query_start], &url[query_start + 1..]);
    let mut kept = Vec::new();
    let mut own = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(raw_key)?;
        if OWN_KEYS.contains(&key.as_str()) {
            own.push((key, percent_decode(raw_value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(SplitOptions { rest, own })
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text
                .get(at + 1..at + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a '%' in the URL's options is not followed by two hex digits")?;
            decoded.push(hex);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| "a URL option is not valid UTF-8".to_string())
}

fn split_key_values(text: &str) -> Result<SplitOptions, String> {
    let mut rest = String::with_capacity(text.len());
    let mut own = Vec::new();
    let mut chars = text.char_indices().peekable();
    // Copied verbatim up to here: the text between pairs, and kept pairs.
    let mut copied_to = 0;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(pair_start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            // Not a pair: tokio-postgres will say what is wrong with it.
            return Ok(SplitOptions {
                rest: text.to_string(),
                own: Vec::new(),
            });
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let value = read_value(&mut chars)?;
        let pair_end = chars.peek().map_or(text.len(), |(at, _)| *at);
        if OWN_KEYS.contains(&key.as_str()) {
            rest.push_str(&text[copied_to..pair_start]);
            copied_to = pair_end;
            own.push((key, value));
        }
    }
    rest.push_str(&text[copied_to..]);
    Ok(SplitOptions {
        rest: rest.trim().to_string(),
        own,
    })
}

fn read_value(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, String> {
    let mut value = String::new();
    if chars.next_if(|(_, c)| *c == '\'').is_some() {
        loop {
            match chars.next() {
                None => return Err("a quoted value in the connection string is not closed".into()),
                Some((_, '\'')) => return Ok(value),
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) => value.push(c),
                    None => return Err("the connection string ends with a backslash".into()),
                },
                Some((_, c)) => value.push(c),
            }
        }
    }
    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
        if c == '\\' {
            match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => return Err("the connection string ends with a backslash".into()),
            }
        } else {
            value.push(c);
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Vec<(&'static str, String)>) {
        let split = split_own_options(url).unwrap();
        let own = split
            .own
            .into_iter()
            .map(|(key, value)| {
                let key = OWN_KEYS.iter().find(|known| **known == key).unwrap();
                (*key, value)
            })
            .collect();
        (split.rest, own)
    }

    #[test]
    fn url_options_are_split_and_decoded() {
        let (rest, tls) = split(
            "postgres://u:p@h/db?sslmode=verify-full&connect_timeout=3&sslrootcert=%2Ftmp%2Fca%20x.pem",
        );
        assert_eq!(rest, "postgres://u:p@h/db?connect_timeout=3");
        assert_eq!(
            tls,
            [
                ("sslmode", "verify-full".to_string()),
                ("sslrootcert", "/tmp/ca x.pem".to_string())
            ]
        );
    }

    #[test]
    fn url_with_only_tls_options_loses_its_query() {
        assert_eq!(
            split("postgresql://h/db?sslmode=require").0,
            "postgresql://h/db"
        );
        assert_eq!(split("postgres://h/db").0, "postgres://h/db");
        assert!(split("postgres://h/db").1.is_empty());
    }

    #[test]
    fn url_with_a_broken_escape_is_refused() {
        assert!(split_own_options("postgres://h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn key_value_options_are_split_with_quotes_and_escapes() {
        let (rest, tls) = split(
            r"host=h sslmode = verify-ca sslrootcert='/tmp/my ca\'s.pem' dbname=db sslkey=/k\ ey",
        );
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            ["host=h", "dbname=db"]
        );
        assert_eq!(
            tls,
            [
                ("sslmode", "verify-ca".to_string()),
                ("sslrootcert", "/tmp/my ca's.pem".to_string()),
                ("sslkey", "/k ey".to_string())
            ]
        );
    }

    #[test]
    fn key_value_text_without_tls_options_is_unchanged() {
        let text = "host=h user=u password='a b'";
        assert_eq!(split(text).0, text);
    }

    #[test]
    fn an_unclosed_quote_is_refused() {
        assert!(split_own_options("host=h sslrootcert='/tmp").is_err());
    }
}
