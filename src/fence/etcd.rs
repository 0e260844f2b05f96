//! Fenced writes to keys in etcd.
