//! The value at a JSON pointer (RFC 6901) in a response body, without building a document: the
//! shadow comparison reads one field of two answers, and `serde_json::Value` would cost the wasm
//! tens of KB. A scanner that skips what it does not need, bounds-checked on every byte.

/// A scalar found at the pointer.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Number(f64),
    Text(String),
    Bool(bool),
    Null,
}

impl Scalar {
    /// A label for agreement checks: the text, or the JSON spelling of the other kinds.
    pub fn label(&self) -> String {
        match self {
            Scalar::Number(n) => format!("{n}"),
            Scalar::Text(s) => s.clone(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => "null".to_owned(),
        }
    }
}

/// The scalar at `pointer` (e.g. `/prediction`, `/scores/0`) in `json`, or `None` when the path does
/// not exist, the value is an object or array, or the text is not JSON there.
pub fn pick(json: &[u8], pointer: &str) -> Option<Scalar> {
    let mut p = Parser { s: json, i: 0 };
    let tokens: Vec<String> = if pointer.is_empty() {
        Vec::new()
    } else {
        pointer
            .strip_prefix('/')?
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect()
    };
    for token in &tokens {
        p.ws();
        match p.peek()? {
            b'{' => {
                p.i += 1;
                loop {
                    p.ws();
                    if p.peek()? == b'}' {
                        return None;
                    }
                    let key = p.string()?;
                    p.ws();
                    p.expect(b':')?;
                    p.ws();
                    if key == *token {
                        break;
                    }
                    p.skip_value()?;
                    p.ws();
                    if p.peek()? == b',' {
                        p.i += 1;
                    }
                }
            }
            b'[' => {
                let index: usize = token.parse().ok()?;
                p.i += 1;
                for _ in 0..index {
                    p.ws();
                    if p.peek()? == b']' {
                        return None;
                    }
                    p.skip_value()?;
                    p.ws();
                    p.expect(b',')?;
                }
                p.ws();
                if p.peek()? == b']' {
                    return None;
                }
            }
            _ => return None,
        }
    }
    p.ws();
    p.scalar()
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// A JSON string, unescaped (\uXXXX included, surrogate pairs joined).
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xd800) << 10) + (lo.checked_sub(0xdc00)?)
                            } else {
                                hi
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    }

    fn scalar(&mut self) -> Option<Scalar> {
        match self.peek()? {
            b'"' => self.string().map(Scalar::Text),
            b't' => self.word(b"true").map(|_| Scalar::Bool(true)),
            b'f' => self.word(b"false").map(|_| Scalar::Bool(false)),
            b'n' => self.word(b"null").map(|_| Scalar::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                text.parse().ok().map(Scalar::Number)
            }
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        (self.s.get(self.i..self.i + w.len())? == w).then(|| self.i += w.len())
    }

    /// Skips any value, nesting included, with a depth bound so hostile input cannot recurse deep.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek()? {
                b'{' | b'[' => {
                    depth += 1;
                    if depth > 128 {
                        return None;
                    }
                    self.i += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                }
                b'"' => {
                    self.string()?;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                _ => {
                    self.scalar()?;
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_scalars_by_pointer() {
        let doc = br#"{"model":"v2","meta":{"a":[1,{"x":"}"}]},"scores":[0.1, 2.5e-1, {"k":true}],"prediction":0.73,"a/b":null,"lbl":"caf\u00e9 \ud83d\ude00"}"#;
        assert_eq!(pick(doc, "/prediction"), Some(Scalar::Number(0.73)));
        assert_eq!(pick(doc, "/scores/1"), Some(Scalar::Number(0.25)));
        assert_eq!(pick(doc, "/scores/2/k"), Some(Scalar::Bool(true)));
        assert_eq!(pick(doc, "/model"), Some(Scalar::Text("v2".into())));
        assert_eq!(pick(doc, "/a~1b"), Some(Scalar::Null));
        assert_eq!(pick(doc, "/lbl"), Some(Scalar::Text("café 😀".into())));
        assert_eq!(pick(doc, "/meta"), None, "objects are not scalars");
        assert_eq!(pick(doc, "/scores/9"), None);
        assert_eq!(pick(doc, "/missing"), None);
        assert_eq!(pick(doc, "prediction"), None, "a pointer starts with /");
    }

    #[test]
    fn hostile_input_gives_none_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"prediction\":",
            b"[[[[",
            b"{\"a\":\"\\u12\"}",
            b"\xff\xfe",
            b"{\"prediction\":1e999999}",
        ] {
            let _ = pick(bad, "/prediction");
            let _ = pick(bad, "/a/0");
        }
        let deep = format!(
            "{{\"x\":{}1{},\"prediction\":2}}",
            "[".repeat(500),
            "]".repeat(500)
        );
        assert_eq!(pick(deep.as_bytes(), "/prediction"), None);
    }
}
