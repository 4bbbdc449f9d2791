# Workload policy of the manticore job (controller and front end). A task may read, with no policy, only the
# Nomad variables at nomad/jobs, nomad/jobs/<job>, nomad/jobs/<job>/<group> and nomad/jobs/<job>/<group>/<task>
# (exactly these paths): nomad/jobs/manticore (the configuration) is one of them, but the agents' tokens at
# nomad/jobs/manticore/secrets are not (the groups are "controller" and "frontend"), so without this policy
# the tasks' templates are refused and never render. Applied to the job's workload identity:
#   nomad acl policy apply -namespace default -job manticore -description "Manticore: read its secrets" manticore-variables manifests/nomad/manticore-variables-policy.hcl
namespace "default" {
  variables {
    path "nomad/jobs/manticore/secrets" {
      capabilities = ["read"]
    }
  }
}
