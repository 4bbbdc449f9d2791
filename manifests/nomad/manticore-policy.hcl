# Nomad ACL policy for Manticore. The controller registers, reads and purges one job per session and
# follows Nomad's event stream (topics Job, Allocation and Evaluation: read-job; Node: node read); the front
# end reads the sessions' task logs for their owners through the client fs logs API (read-logs, which
# allows no other file of an allocation, unlike read-fs):
#   nomad acl policy apply -description "Manticore controller" manticore manifests/nomad/manticore-policy.hcl
#   nomad acl token create -name manticore -policy manticore
namespace "default" {
  capabilities = ["submit-job", "read-job", "list-jobs", "read-logs"]
}

node {
  policy = "read"
}
