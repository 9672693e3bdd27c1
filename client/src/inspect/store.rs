//! The exchanges the inspector keeps, within its memory budget.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::exchange::Exchange;

/// The kept exchanges by id (the order they started in). Adding one past
/// the budget forgets the oldest.
#[derive(Debug)]
pub(crate) struct Store {
    items: BTreeMap<u64, Arc<Exchange>>,
    bytes: usize,
    limit: usize,
}

/// What `GET /api/requests` asks for.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub limit: Option<usize>,
    pub tunnel: Option<String>,
    pub kind: Option<String>,
    pub method: Option<String>,
    /// A status (`404`) or a class (`4xx`).
    pub status: Option<String>,
    /// A path prefix.
    pub path: Option<String>,
    /// Text to find in the path, a header value or a body.
    pub search: Option<String>,
}

impl Filter {
    fn matches(&self, e: &Exchange) -> bool {
        self.tunnel.as_deref().is_none_or(|t| t == &*e.tunnel)
            && self.kind.as_deref().is_none_or(|k| k == e.kind.as_str())
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&e.request.method))
            && self
                .status
                .as_deref()
                .is_none_or(|s| status_matches(s, e.status()))
            && self
                .path
                .as_deref()
                .is_none_or(|p| e.request.path.starts_with(p))
            && self.search.as_deref().is_none_or(|q| e.contains(q))
    }
}

fn status_matches(wanted: &str, status: u16) -> bool {
    let wanted = wanted.trim().to_ascii_lowercase();
    match wanted.strip_suffix("xx") {
        Some(class) => class.parse::<u16>().is_ok_and(|c| status / 100 == c),
        None => wanted.parse::<u16>().is_ok_and(|s| s == status),
    }
}

impl Store {
    pub fn new(limit: usize) -> Store {
        Store {
            items: BTreeMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Adds an exchange, or replaces the one with its id (an upgrade that
    /// ended); then forgets the oldest until the rest fit the budget.
    pub fn put(&mut self, exchange: Arc<Exchange>) {
        self.bytes += exchange.cost();
        if let Some(old) = self.items.insert(exchange.id, exchange) {
            self.bytes -= old.cost();
        }
        while self.bytes > self.limit && self.items.len() > 1 {
            if let Some((_, old)) = self.items.pop_first() {
                self.bytes -= old.cost();
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Exchange>> {
        self.items.get(&id).cloned()
    }

    /// Newest first.
    pub fn list(&self, filter: &Filter) -> Vec<Arc<Exchange>> {
        self.items
            .values()
            .rev()
            .filter(|e| filter.matches(e))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many of each kind are kept.
    /// How many kept exchanges are of `kind` (`http`, `mail`, an
    /// adapter's name).
    pub fn count(&self, kind: &str) -> usize {
        self.items
            .values()
            .filter(|e| e.kind.as_str() == kind)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::exchange::Kind;
    use super::*;

    fn exchange(id: u64, body: usize) -> Arc<Exchange> {
        let mut e = Exchange::new(id, Kind::Http, "t".into(), SystemTime::now());
        e.request.method = "GET".into();
        e.request.path = format!("/{id}");
        e.request.body.push(&vec![b'x'; body], body);
        Arc::new(e)
    }

    #[test]
    fn the_oldest_go_first_and_the_rest_fit_the_budget() {
        let mut store = Store::new(100_000);
        for id in 0..100 {
            store.put(exchange(id, 10_000));
        }
        assert!(store.bytes() <= 100_000);
        let kept = store.list(&Filter::default());
        assert_eq!(kept.len(), store.len());
        assert_eq!(kept[0].id, 99, "newest first");
        assert!(kept.iter().all(|e| e.id > 100 - kept.len() as u64 - 1));
        // a replaced exchange is counted once
        let before = store.bytes();
        store.put(exchange(99, 10_000));
        assert_eq!(store.bytes(), before);
    }

    #[test]
    fn filters_combine() {
        let mut store = Store::new(usize::MAX);
        for id in 0..10 {
            let mut e = (*exchange(id, 0)).clone();
            let status = if id % 2 == 0 { 200 } else { 404 };
            let mut response =
                super::super::exchange::Message::with_fields("".into(), String::new(), status, &[]);
            let text = format!("body {id}");
            response.body.push(text.as_bytes(), text.len());
            e.response = Some(response);
            store.put(Arc::new(e));
        }
        let f = |status: &str, search: Option<&str>| Filter {
            status: Some(status.into()),
            search: search.map(str::to_string),
            ..Filter::default()
        };
        assert_eq!(store.list(&f("4xx", None)).len(), 5);
        assert_eq!(store.list(&f("200", None)).len(), 5);
        assert_eq!(store.list(&f("404", Some("BODY 3"))).len(), 1);
        assert_eq!(store.list(&f("2xx", Some("body 3"))).len(), 0);
    }
}
