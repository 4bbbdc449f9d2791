# Consul ACL policy for every Manticore process (controller, front end, router):
#   consul acl policy create -name manticore -rules @manifests/consul/manticore-policy.hcl
#   consul acl token create -description manticore -policy-name manticore
# Manticore keeps everything under one KV prefix (store.prefix, default manticore/) and takes a session
# lock for leader election, so it needs write on that prefix and on sessions, and nothing else.
key_prefix "manticore/" {
  policy = "write"
}

session_prefix "" {
  policy = "write"
}
