# Manticore's controller and front end, as a Nomad service job.
#   nomad job run -var image=<your manticore image> manifests/nomad/manticore.nomad.hcl
# (with -var 'datacenters=["dc1","dc2"]' where the Nomad clients are not all in dc1).
# The image is built from the repository's Dockerfile (`docker build -t <image> .`); the router job uses its
# `router` target, which adds HAProxy.
# The configuration file is rendered from the Nomad variable nomad/jobs/manticore (key: config),
# the tokens from nomad/jobs/manticore/secrets, which the tasks may read only once
# manticore-variables-policy.hcl is applied to this job; see docs/operations.md, "Deploying on Nomad and Consul".

variable "image" {
  type        = string
  description = "Manticore container image"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "manticore" {
  type        = "service"
  datacenters = var.datacenters

  group "controller" {
    # One controller acts at a time: the replicas elect a leader with a Consul session lock on
    # <prefix>leader; the standby keeps its caches warm and takes over within a second of a graceful stop.
    count = 2

    # On different nodes where there are several, so one node going away does not take both.
    spread {
      attribute = "${node.unique.id}"
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    network {
      port "status" {
        to = 8081
      }
    }

    # /healthz, /readyz (caches synced) and /metrics of each replica.
    service {
      name     = "manticore-controller"
      port     = "status"
      provider = "consul"

      check {
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "controller" {
      driver = "docker"
      # SIGTERM first: the process hands over or finishes its work within shutdown.graceSeconds (20).
      kill_timeout = "30s"

      config {
        image = var.image
        ports = ["status"]
        args  = ["controller", "--config", "/local/manticore.yaml"]
      }

      # The listener the port mapping and Consul's check reach, whatever the configuration says. The routers'
      # status server as manticore-router.nomad.hcl sets it: the controller points the AWS load balancers'
      # health checks (aws.healthCheck, when unset) at its /readyz.
      env {
        MANTICORE_CONTROLLER_STATUS_HOST = "0.0.0.0"
        MANTICORE_CONTROLLER_STATUS_PORT = "8081"
        MANTICORE_HEALTH_URL             = "http://127.0.0.1:8081/healthz"
        MANTICORE_ROUTER_STATUS_HOST     = "0.0.0.0"
        MANTICORE_ROUTER_STATUS_PORT     = "8405"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/manticore\" }}{{ .config }}{{ end }}"
        destination = "local/manticore.yaml"
      }

      template {
        data        = <<-EOT
          CONSUL_HTTP_ADDR=http://{{ env "attr.unique.network.ip-address" }}:8500
          NOMAD_ADDR=http://{{ env "attr.unique.network.ip-address" }}:4646
          {{ with nomadVar "nomad/jobs/manticore/secrets" }}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          NOMAD_TOKEN={{ .nomad_token }}
          {{ end }}
        EOT
        destination = "secrets/manticore.env"
        env         = true
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  group "frontend" {
    count = 2

    # Out of Consul's catalog (and so of a load balancer following it) a while before it is told to stop.
    shutdown_delay = "5s"

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      port "http" {
        to = 4000
      }
    }

    service {
      name     = "manticore-frontend"
      port     = "http"
      provider = "consul"

      # Ready while its caches are synced and its Consul agent answers: a front end that cannot reach the store
      # cannot create, delete or keep a session alive, so the load balancer sends its users elsewhere.
      check {
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "frontend" {
      driver = "docker"
      # SIGTERM first: the process hands over or finishes its work within shutdown.graceSeconds (20).
      kill_timeout = "30s"

      config {
        image = var.image
        ports = ["http"]
        args  = ["frontend", "--config", "/local/manticore.yaml"]
      }

      # The listener the port mapping and Consul's check reach, whatever the configuration says.
      env {
        MANTICORE_FRONTEND_HOST = "0.0.0.0"
        MANTICORE_FRONTEND_PORT = "4000"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/manticore\" }}{{ .config }}{{ end }}"
        destination = "local/manticore.yaml"
      }

      # The Nomad agent too, as for the controller: the front end reads sessions' task logs through it (read-logs).
      template {
        data        = <<-EOT
          CONSUL_HTTP_ADDR=http://{{ env "attr.unique.network.ip-address" }}:8500
          NOMAD_ADDR=http://{{ env "attr.unique.network.ip-address" }}:4646
          {{ with nomadVar "nomad/jobs/manticore/secrets" }}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          NOMAD_TOKEN={{ .nomad_token }}
          {{ end }}
        EOT
        destination = "secrets/manticore.env"
        env         = true
      }

      resources {
        cpu    = 300
        memory = 256
      }
    }
  }
}
