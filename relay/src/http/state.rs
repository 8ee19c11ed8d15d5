//! What every handler can reach.

use std::sync::Arc;

use crate::app::App;
use crate::auth::Authenticator;

#[derive(Clone, Debug)]
pub(crate) struct HttpState {
    pub app: Arc<App>,
    pub auth: Arc<Authenticator>,
}
