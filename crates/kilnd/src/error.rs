//! What a route answers when it cannot do what it was asked: an HTTP status and one line saying what and why.

use kiln_image::instance::InstanceError;
use kiln_launch::chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (its body, a field, a query parameter): 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such instance (or route): 404.
    #[error("{0}")]
    NotFound(String),
    /// The instance is not in a state that allows it (running, not running, not kilnd's, a name taken): 409.
    #[error("{0}")]
    Conflict(String),
    /// kilnd failed (its store, the host): 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::Internal(_) => 500,
        }
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        let message = chain(&e);
        match e {
            InstanceError::NoSuch(_) => ApiError::NotFound(message),
            InstanceError::Ambiguous(_) | InstanceError::BadName { .. } => ApiError::BadRequest(message),
            InstanceError::NameTaken { .. } | InstanceError::PortTaken { .. } => ApiError::Conflict(message),
            InstanceError::Damaged { .. } | InstanceError::NotItsDirectory { .. } | InstanceError::Store(_) => {
                ApiError::Internal(message)
            }
        }
    }
}
