//! Paged listings: each page asked for with the token (or marker) the last one returned, until
//! one returns none or a bound on the pages is reached.

use std::future::Future;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::{Call, CallError, THROTTLE_BURST};

/// The pages of a listing, each asked for again through a burst of throttling
/// ([`THROTTLE_BURST`]): `page(token)` makes the call for one (the first with `None`), `next`
/// reads the token of the page after it from its answer; none, or an empty one, ends the
/// listing. At most `max_pages` pages are asked for: a listing with more is an error, not a
/// partial answer (prune must not take a partial "in use" set for the whole one, nor gc a
/// partial search for "nothing left"). `what` names the listing in the error ("list load
/// balancers").
pub async fn all<'a, F, Fut, T, E>(
    max_pages: usize,
    what: &str,
    mut page: impl FnMut(Option<String>) -> Call<'a, F>,
    next: impl Fn(&T) -> Option<&str>,
) -> Result<Vec<T>, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut pages = Vec::new();
    let mut token = None;
    for _ in 0..max_pages {
        let call = page(token.take());
        let region = call.region().to_owned();
        let out = call
            .settle(&THROTTLE_BURST)
            .or_fail(|| what.to_owned())
            .await?;
        token = next(&out).filter(|t| !t.is_empty()).map(str::to_owned);
        pages.push(out);
        if token.is_none() {
            return Ok(pages);
        }
        if pages.len() == max_pages {
            return Err(CallError::new(
                what,
                region,
                format!(
                    "more than {max_pages} pages; bake stops rather than act on part of the listing"
                ),
            ));
        }
    }
    Ok(pages)
}
