//! TLS to PostgreSQL, configured the way libpq is: `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` in `source.url`. One implementation serves every connection: the replication
//! client's (pgwire-replication, on rustls) negotiates TLS on the socket, and the SQL
//! connections (tokio-postgres) speak over the stream it returns. See ADR 0008.

use pgwire_replication::{SslMode, TlsConfig};
use std::path::PathBuf;

/// The parameters weir takes out of a connection string before tokio-postgres reads it,
/// and the environment variables libpq reads for them.
const TLS_KEYS: [(&str, &str); 4] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
];

fn is_tls_key(key: &str) -> bool {
    TLS_KEYS.iter().any(|(k, _)| *k == key)
}

/// TLS settings in a connection string that weir cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode `{0}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    #[error(
        "sslrootcert=system trusts every public authority: it goes with sslmode=verify-full only"
    )]
    SystemRootsUnchecked,
    #[error("sslrootcert {}: no such file", .0.display())]
    NoRootCert(PathBuf),
    #[error(
        "sslmode=verify-ca and verify-full check the server against a certificate authority: \
         name its certificate with sslrootcert=/path/ca.pem (or put it in ~/.postgresql/root.crt; \
         sslrootcert=system with verify-full trusts the public authorities)"
    )]
    NoAuthority,
    #[error("sslcert and sslkey go together (a client certificate and its key)")]
    CertWithoutKey,
    #[error("`{0}` in source.url has no value (write key=value)")]
    NoValue(String),
    #[error("the value of `{0}` in source.url has no closing quote")]
    UnclosedQuote(String),
    #[error(
        "source.url `{0}://…` is not a PostgreSQL URL: write postgres://user:password@host:5432/database (or libpq's key=value form)"
    )]
    NotPostgres(String),
}

/// Splits the TLS parameters off `url` (a `postgres://` URL or `key=value` pairs): the
/// connection string without them, and the TLS settings they make, with libpq's
/// `PGSSL*` variables for what the string leaves out. The default is libpq's, `prefer`:
/// TLS when the server offers it, without checking its certificate.
pub fn split(url: &str) -> Result<(String, TlsConfig), TlsError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if let Some((scheme, _)) = url.split_once("://")
        && !is_url
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    {
        return Err(TlsError::NotPostgres(scheme.to_owned()));
    }
    let (rest, mut pairs) = match is_url {
        true => split_url(url),
        false => split_pairs(url)?,
    };
    for (key, var) in TLS_KEYS {
        if !pairs.iter().any(|(k, _)| k == key)
            && let Ok(value) = std::env::var(var)
            && !value.is_empty()
        {
            pairs.push((key.to_string(), value));
        }
    }
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    // libpq's default place for the authority's certificate.
    let default_root = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".postgresql").join("root.crt"))
        .filter(|p| p.exists());
    let root = get("sslrootcert").or_else(|| {
        // As libpq: with that file present, `require` checks the chain too.
        (get("sslmode").as_deref() == Some("require"))
            .then(|| default_root.as_ref().map(|p| p.display().to_string()))
            .flatten()
    });
    let mode = ssl_mode(get("sslmode").as_deref(), root.is_some())?;
    let ca = authority(root.as_deref(), mode, default_root)?;
    let (cert, key) = (get("sslcert"), get("sslkey"));
    if cert.is_some() != key.is_some() {
        return Err(TlsError::CertWithoutKey);
    }
    let mut tls = TlsConfig::disabled();
    tls.mode = mode;
    tls.ca_pem_path = ca;
    tls.client_cert_pem_path = cert.map(PathBuf::from);
    tls.client_key_pem_path = key.map(PathBuf::from);
    Ok((rest, tls))
}

/// The mode `sslmode` names, libpq's `prefer` when it is not given.
fn ssl_mode(sslmode: Option<&str>, has_root: bool) -> Result<SslMode, TlsError> {
    Ok(match sslmode {
        None | Some("prefer") | Some("allow") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        // As libpq: `require` with a root certificate checks the chain too.
        Some("require") if has_root => SslMode::VerifyCa,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => return Err(TlsError::UnknownMode(other.to_string())),
    })
}

/// The certificate authority's file to check the server against (`None`: the public
/// roots, or no check), from `sslrootcert` or libpq's default place.
fn authority(
    root: Option<&str>,
    mode: SslMode,
    default_root: Option<PathBuf>,
) -> Result<Option<PathBuf>, TlsError> {
    let verifying = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    match (root, mode) {
        // The public roots (Mozilla's), only where the host name is checked too.
        (Some("system"), SslMode::VerifyFull) => Ok(None),
        (Some("system"), _) => Err(TlsError::SystemRootsUnchecked),
        (Some(path), _) => {
            let path = PathBuf::from(path);
            match path.exists() {
                true => Ok(Some(path)),
                false => Err(TlsError::NoRootCert(path)),
            }
        }
        (None, _) if verifying => match default_root {
            Some(default) => Ok(Some(default)),
            None => Err(TlsError::NoAuthority),
        },
        (None, _) => Ok(None),
    }
}

/// A URL's TLS parameters, and the URL without them. The query starts at the first `?`
/// after the first `@` (where tokio-postgres looks for it: a password may hold a `?`).
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let start = url.find('@').unwrap_or(0);
    let Some(at) = url[start..].find('?').map(|i| start + i) else {
        return (url.to_string(), Vec::new());
    };
    let (base, query) = (&url[..at], &url[at + 1..]);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            // Percent-decoding only, as tokio-postgres and libpq do: a `+` stays a `+`.
            url::form_urlencoded::parse(s.replace('+', "%2B").as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default()
        };
        let key = decode(k);
        match is_tls_key(&key) {
            true => taken.push((key, decode(v))),
            false => kept.push(part),
        }
    }
    let rest = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (rest, taken)
}

/// `key = value` pairs (values optionally in single quotes, with `\'` and `\\`), the
/// TLS ones taken out and the others kept as written.
fn split_pairs(text: &str) -> Result<(String, Vec<(String, String)>), TlsError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].1.is_whitespace() {
            *i += 1;
        }
    };
    let offset = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    loop {
        skip_space(&mut i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && chars[i].1 != '=' && !chars[i].1.is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().map(|c| c.1).collect();
        skip_space(&mut i);
        if chars.get(i).map(|c| c.1) != Some('=') {
            return Err(TlsError::NoValue(key));
        }
        i += 1;
        skip_space(&mut i);
        let mut value = String::new();
        if chars.get(i).map(|c| c.1) == Some('\'') {
            i += 1;
            loop {
                match chars.get(i).map(|c| c.1) {
                    None => return Err(TlsError::UnclosedQuote(key)),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1].1);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].1.is_whitespace() {
                value.push(chars[i].1);
                i += 1;
            }
        }
        match is_tls_key(&key) {
            true => taken.push((key, value)),
            false => kept.push(&text[offset(start)..offset(i)]),
        }
    }
    Ok((kept.join(" "), taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_tls_parameters_out_of_a_url() {
        let (rest, tls) = split(
            "postgres://u:p@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=Cargo.toml",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.ca_pem_path, Some(PathBuf::from("Cargo.toml")));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, tls) = split("postgres://u:p?x@db/app?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://u:p?x@db/app", SslMode::Require)
        );
    }

    #[test]
    fn key_value_strings_with_spaces_and_quotes() {
        let (rest, tls) =
            split("host=db  password='a sslmode=disable'  sslmode = require dbname=app").unwrap();
        assert_eq!(rest, "host=db password='a sslmode=disable' dbname=app");
        assert_eq!(tls.mode, SslMode::Require);
        assert!(split("host=db sslmode").is_err());
        assert!(split("host=db password='open").is_err());
    }

    #[test]
    fn defaults_to_prefer_as_libpq_does() {
        let (rest, tls) = split("postgres://db/app").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://db/app", SslMode::Prefer)
        );
        let (rest, tls) = split("host=db dbname=app sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("host=db dbname=app", SslMode::Disable)
        );
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain() {
        let (_, tls) = split("postgres://db/app?sslmode=require&sslrootcert=Cargo.toml").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
    }

    #[test]
    fn verifying_needs_an_authority_and_system_roots_need_the_host_checked() {
        let (_, tls) = split("postgres://db/app?sslmode=verify-full&sslrootcert=system").unwrap();
        assert_eq!((tls.mode, tls.ca_pem_path), (SslMode::VerifyFull, None));
        assert!(split("postgres://db/app?sslmode=verify-ca&sslrootcert=system").is_err());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(split("postgres://db/app?sslmode=sometimes").is_err());
        assert!(split("postgres://db/app?sslcert=a.pem").is_err());
        assert!(split("postgres://db/app?sslrootcert=/nonexistent/ca.pem").is_err());
    }

    /// Regression: `mysql://…` was read as key=value pairs ("has no value").
    #[test]
    fn a_url_of_another_database_is_named_as_such() {
        let err = split("mysql://root@localhost/shop")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("source.url `mysql://…` is not a PostgreSQL URL"),
            "{err}"
        );
        assert!(split("host=localhost dbname=shop").is_ok());
    }
}
