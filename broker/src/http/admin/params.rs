//! Query parameters and paging shared by the list endpoints.
//!
//! Parameters are checked strictly: an unknown name (a typo such as `clientId`) or a value
//! that doesn't parse is a 400 naming it, never silently ignored.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use serde::Serialize;

use super::ApiError;

/// Default page size of list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size; larger requests are capped to it.
pub const MAX_LIMIT: usize = 1000;

/// The query string, validated against the names an endpoint accepts.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

/// What the `Query` extractor hands a handler.
pub type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl Params {
    /// Parses the query, refusing names outside `accepted` and repeated names.
    pub fn parse(query: RawQuery, accepted: &[&str]) -> Result<Params, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Params::from_pairs(pairs, accepted)
    }

    pub fn from_pairs(pairs: Vec<(String, String)>, accepted: &[&str]) -> Result<Params, ApiError> {
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !accepted.contains(&name.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {name:?} (accepted: {})",
                    accepted.join(", ")
                )));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {name:?} given more than once"
                )));
            }
        }
        Ok(Params { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `true`/`false` (also `1`/`0`); absent is `None`.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(ApiError::BadRequest(format!(
                "query parameter {name:?} must be true or false, not {other:?}"
            ))),
        }
    }

    /// `page` (from 1, default 1) and `limit` (1.., default 100, capped at 1000).
    pub fn paging(&self) -> Result<Paging, ApiError> {
        let page = self.positive("page")?.unwrap_or(1);
        let limit = self
            .positive("limit")?
            .unwrap_or(DEFAULT_LIMIT)
            .min(MAX_LIMIT);
        Ok(Paging { page, limit })
    }

    fn positive(&self, name: &str) -> Result<Option<usize>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        match text.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::BadRequest(format!(
                "query parameter {name:?} must be a positive integer, not {text:?}"
            ))),
        }
    }
}

/// Which slice of a sorted result a list request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub page: usize,
    pub limit: usize,
}

/// The `meta` object of a list answer; `count` is the total that matched the filters.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Meta {
    pub page: usize,
    pub limit: usize,
    pub count: usize,
    pub hasnext: bool,
}

/// A list answer: `{"data": [...], "meta": {...}}`.
#[derive(Debug, Serialize)]
pub struct Listing<T> {
    pub data: Vec<T>,
    pub meta: Meta,
}

impl Paging {
    /// Cuts this page out of `items` (already filtered and sorted) and converts only the
    /// items on it, so a large result costs one sort, not one rendering per item.
    pub fn apply<I, T>(self, items: Vec<I>, render: impl FnMut(I) -> T) -> Listing<T> {
        let count = items.len();
        let start = (self.page - 1).saturating_mul(self.limit);
        let data: Vec<T> = items
            .into_iter()
            .skip(start)
            .take(self.limit)
            .map(render)
            .collect();
        Listing {
            meta: Meta {
                page: self.page,
                limit: self.limit,
                count,
                hasnext: start.saturating_add(self.limit) < count,
            },
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["page", "limit", "connected", "node"];

    fn params(query: &[(&str, &str)]) -> Result<Params, ApiError> {
        let pairs = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::from_pairs(pairs, NAMES)
    }

    fn bad(query: &[(&str, &str)]) -> String {
        let err = params(query)
            .and_then(|p| p.paging().and(p.flag("connected")))
            .expect_err("expected a bad request");
        assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
        err.to_string()
    }

    #[test]
    fn paging_defaults_and_the_limit_cap() {
        let p = params(&[]).unwrap().paging().unwrap();
        assert_eq!(
            p,
            Paging {
                page: 1,
                limit: 100
            }
        );
        let p = params(&[("page", "3"), ("limit", "5000")]).unwrap();
        assert_eq!(
            p.paging().unwrap(),
            Paging {
                page: 3,
                limit: 1000
            }
        );
        let p = params(&[("limit", "1000")]).unwrap();
        assert_eq!(p.paging().unwrap().limit, 1000);
    }

    #[test]
    fn bad_parameters_are_named_in_the_error() {
        assert!(bad(&[("page", "0")]).contains("\"page\""));
        assert!(bad(&[("limit", "0")]).contains("\"limit\""));
        assert!(bad(&[("limit", "-1")]).contains("\"limit\""));
        assert!(bad(&[("page", "two")]).contains("\"two\""));
        assert!(bad(&[("connected", "yes")]).contains("true or false"));
        assert!(bad(&[("clientId", "x")]).contains("unknown query parameter \"clientId\""));
        assert!(bad(&[("node", "a"), ("node", "b")]).contains("more than once"));
    }

    #[test]
    fn flags_parse_both_spellings() {
        let p = params(&[("connected", "true")]).unwrap();
        assert_eq!(p.flag("connected").unwrap(), Some(true));
        let p = params(&[("connected", "0")]).unwrap();
        assert_eq!(p.flag("connected").unwrap(), Some(false));
        assert_eq!(params(&[]).unwrap().flag("connected").unwrap(), None);
    }

    #[test]
    fn pages_slice_the_sorted_items_and_count_them_all() {
        let items: Vec<u32> = (1..=5).collect();
        let page = |page, limit| Paging { page, limit }.apply(items.clone(), |i| i * 10);

        let l = page(1, 2);
        assert_eq!(l.data, vec![10, 20]);
        assert_eq!(
            l.meta,
            Meta {
                page: 1,
                limit: 2,
                count: 5,
                hasnext: true
            }
        );
        let l = page(3, 2);
        assert_eq!(l.data, vec![50]);
        assert!(!l.meta.hasnext);
        let l = page(4, 2);
        assert!(l.data.is_empty());
        assert_eq!(l.meta.count, 5);
        let l = page(1, 5);
        assert_eq!(l.data.len(), 5);
        assert!(!l.meta.hasnext);
        // A page number far past the end is just empty, not an overflow.
        let l = page(usize::MAX, MAX_LIMIT);
        assert!(l.data.is_empty());
        assert!(!l.meta.hasnext);
    }
}
