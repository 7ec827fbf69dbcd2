/// Response future of [`super::RateLimit`].
pub type ResponseFuture<F, RF> = crate::Either<F, RF>;
