//! Path and method routing on matchit, with 404 and 405 (+ `Allow`) answers.

use std::future::Future;
use std::pin::Pin;

use http::Method;

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;

/// The future a handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>;
/// A handler: context in, response out.
pub(crate) type Handler = fn(Ctx) -> HandlerFuture;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone; limited per client IP.
    Public,
    /// A principal with at least this role; limited per principal.
    Role(tp_core::auth::Role),
}

/// One method on one path.
pub(crate) struct Route {
    pub(crate) pattern: &'static str,
    pub(crate) handler: Handler,
    pub(crate) access: Access,
}

/// Why no route matched.
pub(crate) enum Miss {
    NotFound,
    MethodNotAllowed(String),
}

/// A matched route and its decoded path parameters.
pub(crate) struct Matched<'r> {
    pub(crate) route: &'r Route,
    pub(crate) params: Vec<(&'static str, String)>,
}

/// The routing table.
#[derive(Default)]
pub(crate) struct Router {
    paths: matchit::Router<usize>,
    methods: Vec<Vec<(Method, Route)>>,
    names: Vec<Vec<&'static str>>,
}

impl Router {
    /// Adds `method pattern` (matchit syntax, `{name}` parameters).
    pub(crate) fn add(
        &mut self,
        method: Method,
        pattern: &'static str,
        access: Access,
        handler: Handler,
    ) {
        let index = match self.paths.at(pattern) {
            Ok(found)
                if self.methods[*found.value].first().map(|(_, r)| r.pattern) == Some(pattern) =>
            {
                *found.value
            }
            _ => {
                let index = self.methods.len();
                self.paths
                    .insert(pattern, index)
                    .unwrap_or_else(|e| panic!("route {pattern}: {e}"));
                self.methods.push(Vec::new());
                self.names.push(param_names(pattern));
                index
            }
        };
        self.methods[index].push((
            method,
            Route {
                pattern,
                handler,
                access,
            },
        ));
    }

    /// Every route: method, pattern and access.
    pub(crate) fn list(&self) -> impl Iterator<Item = (&Method, &Route)> {
        self.methods.iter().flatten().map(|(m, r)| (m, r))
    }

    /// Finds the route for `method` on `path`.
    pub(crate) fn at(&self, method: &Method, path: &str) -> Result<Matched<'_>, Miss> {
        let found = self.paths.at(path).map_err(|_| Miss::NotFound)?;
        let index = *found.value;
        let routes = &self.methods[index];
        let wanted = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let Some((_, route)) = routes.iter().find(|(m, _)| m == wanted) else {
            let mut allow: Vec<&str> = routes.iter().map(|(m, _)| m.as_str()).collect();
            if allow.contains(&"GET") {
                allow.push("HEAD");
            }
            return Err(Miss::MethodNotAllowed(allow.join(", ")));
        };
        let params = self.names[index]
            .iter()
            .filter_map(|name| {
                found.params.get(name).map(|raw| {
                    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
                    (*name, decoded.into_owned())
                })
            })
            .collect();
        Ok(Matched { route, params })
    }
}

fn param_names(pattern: &'static str) -> Vec<&'static str> {
    pattern
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| name.trim_start_matches('*'))
        .collect()
}

/// Wraps an `async fn(Ctx) -> Result<Response, ApiError>` as a [`Handler`].
macro_rules! handler {
    ($f:path) => {{
        fn boxed(ctx: $crate::context::Ctx) -> $crate::router::HandlerFuture {
            Box::pin($f(ctx))
        }
        boxed as $crate::router::Handler
    }};
}
pub(crate) use handler;
