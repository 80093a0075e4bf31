//! The CrowdSec Local API over HTTP(S): a blocking `ureq` agent with a `portsentry/VERSION`
//! User-Agent (the LAPI refuses a machine login without a `name/version` one), connect and
//! whole-request timeouts, no redirects, no proxy from the environment, and every answer
//! read through a cap, so a slow, huge or broken LAPI costs bounded time and memory.
//!
//! Secrets (the machine password, the bouncer key) go into request bodies and headers only:
//! no error built here carries them.

use std::borrow::Cow;
use std::io::Read;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest an answer may be; a longer one is an error. A startup stream takes some 150
/// bytes a decision: 100,000 decisions are about 15 MiB, `CROWDSEC_MAX_DECISIONS`'s default
/// of 200,000 about 30 MiB.
pub const BODY_CAP: u64 = 64 << 20;
/// Longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a whole request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the LAPI did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LapiError {
    /// No answer: refused, timed out, reset, name or TLS failure.
    #[error("unreachable ({0})")]
    Unreachable(String),
    /// An HTTP error status, with the start of its body.
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    /// An answer that is not the JSON expected.
    #[error("unexpected answer ({0})")]
    Garbage(String),
    /// An answer longer than [`BODY_CAP`].
    #[error("answer longer than {} MiB", BODY_CAP >> 20)]
    TooLarge,
}

impl LapiError {
    /// Worth trying again later (a LAPI down, restarting or overloaded); a 4xx other than
    /// 401 (which the caller answers with a new login) and 429 will not change by retrying.
    pub fn retryable(&self) -> bool {
        match self {
            LapiError::Status(code, _) => *code >= 500 || *code == 429 || *code == 408,
            _ => true,
        }
    }

    /// The JWT has run out or the LAPI restarted with a new secret: log in again.
    pub fn unauthorized(&self) -> bool {
        matches!(self, LapiError::Status(401, _))
    }
}

/// One decision of the stream (`/v1/decisions/stream`), as the LAPI sends it; its text
/// borrows the answer's bytes where it can (a startup stream holds tens of thousands).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Decision<'a> {
    /// The LAPI's id of the decision.
    #[serde(default)]
    pub id: i64,
    /// Who made it: `cscli`, `crowdsec`, `portsentry`, `CAPI`…
    #[serde(default, borrow)]
    pub origin: Cow<'a, str>,
    /// Why (`manual 'ban' from 'host'`, `portsentry/port-scan`…).
    #[serde(default, borrow)]
    pub scenario: Cow<'a, str>,
    /// `Ip` or `Range` (others exist and are ignored).
    #[serde(default, borrow)]
    pub scope: Cow<'a, str>,
    /// `ban` (`captcha` and others are not blocks).
    #[serde(rename = "type", default, borrow)]
    pub kind: Cow<'a, str>,
    /// The address or network.
    #[serde(default, borrow)]
    pub value: Cow<'a, str>,
    /// Time left, Go syntax; negative for deleted ones.
    #[serde(default, borrow)]
    pub duration: Cow<'a, str>,
}

/// One answer of the stream; the LAPI writes `null` for an empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Stream<'a> {
    /// Decisions made since the last pull (all active ones at startup).
    #[serde(default, borrow, deserialize_with = "null_is_empty")]
    pub new: Vec<Decision<'a>>,
    /// Decisions deleted or expired since the last pull.
    #[serde(default, borrow, deserialize_with = "null_is_empty")]
    pub deleted: Vec<Decision<'a>>,
}

/// Parses an answer of the stream, borrowing from it.
pub fn parse_stream(body: &[u8]) -> Result<Stream<'_>, LapiError> {
    serde_json::from_slice(body).map_err(|e| garbage(body, &e))
}

/// The stream's filters as bouncers have them (`CROWDSEC_ORIGINS`,
/// `CROWDSEC_SCENARIOS_CONTAINING`, `CROWDSEC_SCENARIOS_NOT_CONTAINING`): sent as the
/// stream's query, so the LAPI leaves the rest out, and applied again to what comes back
/// ([`StreamFilter::accepts`]), so an older LAPI that ignores a parameter changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// Exact origin names; empty: all.
    pub origins: Vec<String>,
    /// The scenario contains one of these (case-insensitive); empty: any.
    pub scenarios_containing: Vec<String>,
    /// The scenario contains none of these (case-insensitive).
    pub scenarios_not_containing: Vec<String>,
}

impl StreamFilter {
    /// Whether a decision of this origin and scenario passes.
    pub fn accepts(&self, origin: &str, scenario: &str) -> bool {
        let scenario = scenario.to_lowercase();
        let has = |w: &String| scenario.contains(&w.to_lowercase());
        (self.origins.is_empty() || self.origins.iter().any(|o| o == origin))
            && (self.scenarios_containing.is_empty() || self.scenarios_containing.iter().any(has))
            && !self.scenarios_not_containing.iter().any(has)
    }

    /// The query parameters (name, comma-separated value) of the non-empty filters.
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("origins", &self.origins),
            ("scenarios_containing", &self.scenarios_containing),
            ("scenarios_not_containing", &self.scenarios_not_containing),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.join(",")))
        .collect()
    }
}

/// `CROWDSEC_CA_CERT`, `CROWDSEC_CERT`, `CROWDSEC_KEY` for an `https://` LAPI: a private CA
/// trusted besides the public roots, and a client certificate for a LAPI that asks for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificates trusted besides the public roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate chain and its key (both or neither).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Tls {
    /// The rustls client config these files make; `None` when none is named (ureq's own
    /// default then). Errors name the key and the file.
    fn client_config(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        if self.ca_cert.is_none() && self.client.is_none() {
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let certs = |key: &str, path: &std::path::Path| {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{key}: {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
            }
            Ok(certs)
        };
        if let Some(ca) = &self.ca_cert {
            for cert in certs("CROWDSEC_CA_CERT", ca)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "CROWDSEC_CA_CERT: {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs("CROWDSEC_CERT", cert)?;
                super::read_secret("CROWDSEC_KEY", key)?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!(
                        "CROWDSEC_KEY: {} holds no usable PEM private key: {e}",
                        key.display()
                    )
                })?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    format!(
                        "CROWDSEC_CERT / CROWDSEC_KEY: {} and {} do not make a client \
                         certificate: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
        };
        Ok(Some(std::sync::Arc::new(config)))
    }
}

fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The answer of a delete: how many, as a string (`{"nbDeleted":"1"}`).
#[derive(Deserialize)]
struct Deleted {
    #[serde(rename = "nbDeleted", default)]
    deleted: String,
}

impl Deleted {
    /// The count; a missing or odd one is 0 (the delete itself succeeded).
    fn count(&self) -> u64 {
        self.deleted.parse().unwrap_or(0)
    }
}

/// `POST /v1/watchers/login`'s body.
#[derive(Serialize)]
struct Login<'a> {
    machine_id: &'a str,
    password: &'a str,
}

/// Its answer (only the token matters).
#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
}

/// A LAPI at one base URL.
pub struct Lapi {
    base: String,
    agent: ureq::Agent,
}

impl Lapi {
    /// A client for `base` (`http://127.0.0.1:8080`, no trailing slash needed).
    pub fn new(base: &str) -> Lapi {
        Lapi::with_timeouts(base, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
    }

    /// [`Lapi::new`] with other timeouts (tests of a slow LAPI).
    pub fn with_timeouts(base: &str, connect: Duration, request: Duration) -> Lapi {
        Lapi::build(base, connect, request, None)
    }

    /// [`Lapi::new`] trusting a private CA and presenting a client certificate as `tls`
    /// says; `Err` names the key and file that could not be used.
    pub fn with_tls(base: &str, tls: &Tls) -> Result<Lapi, String> {
        Ok(Lapi::build(
            base,
            CONNECT_TIMEOUT,
            REQUEST_TIMEOUT,
            tls.client_config()?,
        ))
    }

    fn build(
        base: &str,
        connect: Duration,
        request: Duration,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Lapi {
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout(request)
            .redirects(0)
            .user_agent(concat!("portsentry/", env!("CARGO_PKG_VERSION")));
        if let Some(config) = tls {
            agent = agent.tls_config(config);
        }
        Lapi {
            base: base.trim_end_matches('/').to_string(),
            agent: agent.build(),
        }
    }

    /// The base URL, for log lines.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Logs a machine in; the answer is the JWT for [`Lapi::post_alerts`] and
    /// [`Lapi::delete_decision`].
    pub fn login(&self, machine_id: &str, password: &str) -> Result<String, LapiError> {
        let body = serde_json::to_string(&Login {
            machine_id,
            password,
        })
        .map_err(|e| LapiError::Garbage(e.to_string()))?;
        let request = self
            .agent
            .post(&self.url("/v1/watchers/login"))
            .set("Content-Type", "application/json");
        let answer: LoginAnswer = json(&read(request.send_string(&body))?)?;
        Ok(answer.token)
    }

    /// Posts alerts (a JSON array); `Ok` once the LAPI took them all, with the ids it gave
    /// the alerts, in the order posted. An accepted POST whose answer is not a list of ids
    /// is still `Ok` (with no ids): the alerts are in, and failing would post them twice;
    /// the caller then falls back to deleting by scope, value and origin.
    pub fn post_alerts(
        &self,
        token: &str,
        alerts: &serde_json::Value,
    ) -> Result<Vec<String>, LapiError> {
        let body = alerts.to_string();
        let request = self
            .agent
            .post(&self.url("/v1/alerts"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json");
        let answer = read(request.send_string(&body))?;
        Ok(serde_json::from_slice::<Vec<String>>(&answer).unwrap_or_default())
    }

    /// The ids of the decisions of one alert (`GET /v1/alerts/:alert_id`), so that they
    /// can later be deleted one by one without touching anyone else's decision for the
    /// same address. `alert_id` comes from the LAPI: anything but digits is refused rather
    /// than put into a path.
    pub fn alert_decision_ids(&self, token: &str, alert_id: &str) -> Result<Vec<u64>, LapiError> {
        #[derive(Deserialize)]
        struct Alert {
            #[serde(default, deserialize_with = "null_is_empty")]
            decisions: Vec<DecisionId>,
        }
        #[derive(Deserialize)]
        struct DecisionId {
            id: u64,
        }
        if alert_id.is_empty() || !alert_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LapiError::Garbage(format!(
                "alert id \"{}\" is not a number",
                crate::record::excerpt(alert_id)
            )));
        }
        let request = self
            .agent
            .get(&self.url(&format!("/v1/alerts/{alert_id}")))
            .set("Authorization", &format!("Bearer {token}"));
        let alert: Alert = json(&read(request.call())?)?;
        Ok(alert.decisions.into_iter().map(|d| d.id).collect())
    }

    /// Deletes one decision by its id (`DELETE /v1/decisions/:decision_id`, a soft delete
    /// that bouncers see in the stream); answers how many were deleted. A decision that no
    /// longer exists counts as done (`Ok(0)`): crowdsec 1.4.6 answers an unknown id with
    /// `500 {"message":"decision with id 'N' doesn't exist: unable to delete"}`, which
    /// retrying would never change; a 404 (other versions) is taken the same way.
    pub fn delete_decision_by_id(&self, token: &str, id: u64) -> Result<u64, LapiError> {
        let request = self
            .agent
            .delete(&self.url(&format!("/v1/decisions/{id}")))
            .set("Authorization", &format!("Bearer {token}"));
        match read(request.call()) {
            Ok(body) => Ok(json::<Deleted>(&body)?.count()),
            Err(LapiError::Status(404, _)) => Ok(0),
            Err(LapiError::Status(500, text)) if text.contains("doesn't exist") => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Deletes exactly the decisions of this scope, value and origin (never `?ip=`, which
    /// also deletes every range containing the address); answers how many were deleted.
    pub fn delete_decision(
        &self,
        token: &str,
        scope: &str,
        value: &str,
        origin: &str,
    ) -> Result<u64, LapiError> {
        let request = self
            .agent
            .delete(&self.url("/v1/decisions"))
            .query("scopes", scope)
            .query("value", value)
            .query("origin", origin)
            .set("Authorization", &format!("Bearer {token}"));
        let answer: Deleted = json(&read(request.call())?)?;
        Ok(answer.count())
    }

    /// One pull of the decision stream (`startup`: every active decision, and old deleted
    /// ones), with `filter` as its query: the answer's bytes, for [`parse_stream`].
    pub fn stream(
        &self,
        bouncer_key: &str,
        startup: bool,
        filter: &StreamFilter,
    ) -> Result<Vec<u8>, LapiError> {
        let mut request = self
            .agent
            .get(&self.url("/v1/decisions/stream"))
            .set("X-Api-Key", bouncer_key);
        if startup {
            request = request.query("startup", "true");
        }
        for (name, value) in filter.query() {
            request = request.query(name, &value);
        }
        read(request.call())
    }
}

/// The body of a successful answer, at most [`BODY_CAP`] bytes; an error status becomes
/// [`LapiError::Status`] with the start of its body.
fn read(result: Result<ureq::Response, ureq::Error>) -> Result<Vec<u8>, LapiError> {
    match result {
        Ok(response) => capped(response),
        Err(ureq::Error::Status(code, response)) => {
            let body = capped(response).unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            Err(LapiError::Status(code, crate::record::excerpt(text.trim())))
        }
        Err(ureq::Error::Transport(t)) => Err(LapiError::Unreachable(transport_text(&t))),
    }
}

/// A transport error in a few words (`connection refused`, `timed out`…).
fn transport_text(t: &ureq::Transport) -> String {
    use std::error::Error;
    let mut source: Option<&dyn Error> = t.source();
    let mut text = t.message().map(str::to_string);
    while let Some(s) = source {
        text = Some(s.to_string());
        source = s.source();
    }
    let text = text.unwrap_or_else(|| t.kind().to_string());
    let lower = text.to_ascii_lowercase();
    if lower.contains("refused") {
        "connection refused".into()
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "timed out".into()
    } else {
        crate::record::excerpt(&text)
    }
}

fn capped(response: ureq::Response) -> Result<Vec<u8>, LapiError> {
    let mut body = Vec::new();
    response
        .into_reader()
        .take(BODY_CAP + 1)
        .read_to_end(&mut body)
        .map_err(|e| LapiError::Unreachable(format!("reading the answer: {e}")))?;
    if body.len() as u64 > BODY_CAP {
        return Err(LapiError::TooLarge);
    }
    Ok(body)
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, LapiError> {
    serde_json::from_slice(body).map_err(|e| garbage(body, &e))
}

/// An answer that is not the JSON expected, with its start.
fn garbage(body: &[u8], e: &serde_json::Error) -> LapiError {
    let start = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
    LapiError::Garbage(format!(
        "{e}; starts with \"{}\"",
        crate::record::excerpt(&start)
    ))
}

#[cfg(test)]
mod tests;
