return {name = "helper"}
