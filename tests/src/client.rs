//! A small HTTP client for driving traffic through Envoy: one keep-alive agent, statuses as values
//! (a 500 from a model is data here, not an error).

use anyhow::Result;

pub struct Reply {
    pub status: u16,
    /// The arm that answered, from the test server's `x-served-by` header.
    pub served_by: String,
    /// The arm Ramp told the client, when the config asks for a response header.
    pub told_arm: Option<String>,
    pub set_cookie: Option<String>,
    /// Every response header, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Reply {
    /// The value of response header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(10))
                .build(),
        }
    }
}

impl Client {
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        self.send("GET", url, headers, None)
    }

    pub fn post(&self, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply> {
        self.send("POST", url, headers, Some(body))
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        let mut req = self.agent.request(method, url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let sent = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.into()),
        };
        let status = resp.status();
        let served_by = resp.header("x-served-by").unwrap_or_default().to_owned();
        let told_arm = resp.header("x-ramp-arm").map(str::to_owned);
        let set_cookie = resp.header("set-cookie").map(str::to_owned);
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                resp.header(&n)
                    .map(|v| (n.to_ascii_lowercase(), v.to_owned()))
            })
            .collect();
        let text = resp.into_string()?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok(Reply {
            status,
            served_by,
            told_arm,
            set_cookie,
            headers,
            body,
        })
    }
}
