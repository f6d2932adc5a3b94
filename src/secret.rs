//! Secrets that must never reach logs, errors or output: connection URLs with passwords and plain secret strings.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A database or Redis URL whose password is hidden whenever it is shown.
///
/// `Display`, `Debug` and `Serialize` all print the redacted form
/// (`postgres://user:***@host/db`); only [`SecretUrl::expose`] gives the real URL, and it is
/// meant for the one place that opens a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        url::Url::parse(s).map(Self).map_err(|e| format!("invalid URL {}: {e}", redact_url_str(s)))
    }

    /// The URL with its password, for connecting. Never log what this returns.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }

    pub fn scheme(&self) -> &str {
        self.0.scheme()
    }

    /// `host:port` of the server, which is what identifies a database server for
    /// concurrency limits.
    pub fn server(&self) -> String {
        let host = self.0.host_str().unwrap_or("localhost");
        match self.0.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }

    /// The same server with another database name in the path.
    pub fn with_database(&self, database: &str) -> Self {
        let mut url = self.0.clone();
        url.set_path(&format!("/{}", urlencode_path_segment(database)));
        Self(url)
    }

    /// The database named in the URL's path, if any.
    pub fn database(&self) -> Option<String> {
        let path = self.0.path().trim_start_matches('/');
        (!path.is_empty()).then(|| {
            url::form_urlencoded::parse(format!("x={path}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| path.to_string())
        })
    }

    pub fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        // Query parameters can carry secrets too (`?password=`, `sslpassword=`).
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret =
                        k.to_ascii_lowercase().contains("password") || k.to_ascii_lowercase().contains("secret");
                    (k.into_owned(), if secret { "***".to_string() } else { v.into_owned() })
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

fn urlencode_path_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// Redacts a URL given as text, also when it does not parse (best effort: everything
/// between `://user:` and `@` is hidden).
pub fn redact_url_str(s: &str) -> String {
    if let Ok(url) = url::Url::parse(s) {
        return SecretUrl(url).redacted();
    }
    match (s.find("://"), s.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &s[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &s[..scheme_end + 3], &userinfo[..colon], &s[at..]),
                None => s.to_string(),
            }
        }
        _ => s.to_string(),
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A secret string (an access key, a token). Shown as `***` everywhere.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = SecretUrl::parse("postgres://admin:s3cr%40t@db.example:5432/app?sslmode=require&password=x").unwrap();
        for shown in [url.to_string(), format!("{url:?}"), serde_json::to_string(&url).unwrap()] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(shown.contains("admin:***@db.example:5432/app"), "{shown}");
            assert!(!shown.contains("password=x"), "{shown}");
        }
        assert!(url.expose().contains("s3cr%40t"));
        assert_eq!(url.server(), "db.example:5432");
    }

    #[test]
    fn unparsable_urls_are_redacted_too() {
        assert_eq!(redact_url_str("postgres://u:pw@[bad/x"), "postgres://u:***@[bad/x");
        let err = SecretUrl::parse("postgres://u:pw@[bad/x").unwrap_err();
        assert!(!err.contains("pw@"), "{err}");
    }

    #[test]
    fn database_name_is_replaced_and_read_back() {
        let url = SecretUrl::parse("postgres://u:pw@h/postgres?sslmode=disable").unwrap();
        let t = url.with_database("tenant_acme-corp_core");
        assert_eq!(t.database().as_deref(), Some("tenant_acme-corp_core"));
        assert!(t.expose().ends_with("/tenant_acme-corp_core?sslmode=disable"), "{}", t.expose());
        assert_eq!(format!("{}", Secret::new("k")), "***");
    }
}
