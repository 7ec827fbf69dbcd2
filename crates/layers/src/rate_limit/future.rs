use crate::Either;
use crate::slot::BoxResponse;

/// Response future of [`super::RateLimit`]: the inner service's or the rejection's, decided at
/// once, or (a fleet rule) a boxed future that asks the shared store first.
pub type ResponseFuture<F, RF, T, E> = Either<Either<F, RF>, BoxResponse<T, E>>;
