"""Operations tooling around the processes: the Grafana dashboards as code and their pictures."""
