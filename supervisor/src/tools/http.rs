//! `kind = "http"`: the call's args POSTed as JSON to the URL fixed by config, the JSON answer
//! its result. Headers come from config (`headers`) or, by name, from the supervisor's
//! environment at each call (`header_env`; their values are never traced nor put in an error).
//! A status other than 2xx is `tool_failed` (with the start of the body), no answer within
//! `timeout` is `timeout`, a body past `max_response` is `too_large`: refused from its
//! `Content-Length` without reading it, or cut off at the bound while read. No redirects are
//! followed. The client (`ureq`, blocking) runs on the blocking pool.

use super::{err, ErrorKind, ToolError, MAX_ARGS_JSON};
use crate::config::{HttpSpec, ToolSpec};
use corral_proto::Value;

/// A configured http tool's client.
pub(super) struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// The client of `tool` (its timeout applies to the whole exchange).
    pub(super) fn new(tool: &ToolSpec) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(tool.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Client { agent }
    }
}

/// POST `args` to the tool's URL.
pub(super) async fn run(
    tool: &ToolSpec,
    http: &HttpSpec,
    client: &Client,
    args: &Value,
) -> Result<Value, ToolError> {
    let body = serde_json::to_vec(&args.to_json())
        .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("args as JSON: {e}")))?;
    if body.len() > MAX_ARGS_JSON {
        return err(
            ErrorKind::TooLarge,
            format!(
                "the arguments are {} bytes as JSON, more than a tool takes ({MAX_ARGS_JSON})",
                body.len()
            ),
        );
    }
    let mut headers: Vec<(String, String)> = http
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (header, var) in &http.header_env {
        match std::env::var(var) {
            Ok(v) => headers.push((header.clone(), v)),
            Err(_) => {
                return err(
                    ErrorKind::ToolFailed,
                    format!(
                        "header {header}: the supervisor's environment has no variable `{var}`"
                    ),
                )
            }
        }
    }
    let agent = client.agent.clone();
    let url = http.url.clone();
    let max = tool.max_response;
    let name = tool.name.clone();
    let exchange =
        tokio::task::spawn_blocking(move || post(&agent, &url, headers, body, max, &name));
    match tokio::time::timeout(tool.timeout, exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => err(ErrorKind::ToolFailed, format!("the request failed: {e}")),
        Err(_) => err(
            ErrorKind::Timeout,
            format!(
                "tool `{}`: no answer within its timeout ({:?})",
                tool.name, tool.timeout
            ),
        ),
    }
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    max: u64,
    name: &str,
) -> Result<Value, ToolError> {
    let mut req = agent.post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut resp = match req.send(&body[..]) {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => {
            return err(
                ErrorKind::Timeout,
                format!("tool `{name}`: no answer within its timeout"),
            )
        }
        Err(e) => {
            return err(
                ErrorKind::ToolFailed,
                format!("tool `{name}`: POST {url}: {e}"),
            )
        }
    };
    let status = resp.status().as_u16();
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = length.filter(|l| *l > max) {
        return err(
            ErrorKind::TooLarge,
            format!("tool `{name}` answered {len} bytes, more than max_response ({max} bytes)"),
        );
    }
    let read = resp.body_mut().with_config().limit(max).read_to_vec();
    let bytes = match read {
        Ok(b) => b,
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            return err(
                ErrorKind::TooLarge,
                format!("tool `{name}` answered more than max_response ({max} bytes)"),
            )
        }
        Err(ureq::Error::Timeout(_)) => {
            return err(
                ErrorKind::Timeout,
                format!("tool `{name}`: the answer did not arrive within its timeout"),
            )
        }
        Err(e) => {
            return err(
                ErrorKind::ToolFailed,
                format!("tool `{name}`: reading the answer: {e}"),
            )
        }
    };
    if !(200..300).contains(&status) {
        let start = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        return err(
            ErrorKind::ToolFailed,
            format!("tool `{name}`: HTTP {status}: {}", start.trim()),
        );
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map(|v| Value::from_json(&v))
        .map_err(|e| {
            ToolError::new(
                ErrorKind::ToolFailed,
                format!("tool `{name}` answered something that is not JSON: {e}"),
            )
        })
}
