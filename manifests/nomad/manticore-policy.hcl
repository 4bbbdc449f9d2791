# Nomad ACL policy for the Manticore controller, which registers, reads and purges one job per session and
# follows Nomad's event stream (topics Job, Allocation and Evaluation: read-job; Node: node read):
#   nomad acl policy apply -description "Manticore controller" manticore manifests/nomad/manticore-policy.hcl
#   nomad acl token create -name manticore -policy manticore
namespace "default" {
  capabilities = ["submit-job", "read-job", "list-jobs"]
}

node {
  policy = "read"
}
