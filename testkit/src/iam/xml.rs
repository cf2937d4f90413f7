//! A minimal XML reader for EC2's query-protocol answers.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub(super) struct Xml {
    pub(super) name: String,
    pub(super) text: String,
    pub(super) children: Vec<Xml>,
}

impl Xml {
    /// Parses `text`; malformed input gives what was read so far.
    pub(super) fn parse(text: &str) -> Xml {
        let mut stack = vec![Xml::default()];
        let mut rest = text;
        while let Some(i) = rest.find('<') {
            let content = &rest[..i];
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&unescape(content));
            }
            let Some(j) = rest[i..].find('>') else {
                break;
            };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(_name) = tag.strip_prefix('/') {
                if stack.len() > 1 {
                    let done = stack.pop().unwrap_or_default();
                    if let Some(top) = stack.last_mut() {
                        top.children.push(done);
                    }
                }
                continue;
            }
            let selfclosing = tag.ends_with('/');
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let el = Xml {
                name,
                ..Xml::default()
            };
            if selfclosing {
                if let Some(top) = stack.last_mut() {
                    top.children.push(el);
                }
            } else {
                stack.push(el);
            }
        }
        while stack.len() > 1 {
            let done = stack.pop().unwrap_or_default();
            if let Some(top) = stack.last_mut() {
                top.children.push(done);
            }
        }
        stack.pop().unwrap_or_default()
    }

    pub(super) fn child(&self, name: &str) -> Option<&Xml> {
        self.children.iter().find(|c| c.name == name)
    }

    pub(super) fn text_of(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.trim().to_owned())
    }

    /// Every element below this one (depth first), this one included.
    pub(super) fn all(&self) -> Vec<&Xml> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.all());
        }
        out
    }

    /// `<tagSet><item><key/><value/></item></tagSet>` (or `tags`) of this element.
    pub(super) fn tags(&self) -> Option<BTreeMap<String, String>> {
        let set = self.child("tagSet").or_else(|| self.child("tags"))?;
        Some(
            set.children
                .iter()
                .filter_map(|i| Some((i.text_of("key")?, i.text_of("value").unwrap_or_default())))
                .collect(),
        )
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}
