//! Rendering templates (tera) into the files a host receives.
