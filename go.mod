module optipick-webhooks

go 1.26.0

require (
	github.com/VictoriaMetrics/metrics v1.45.0
	github.com/go-json-experiment/json v1.27.2
	github.com/joho/godotenv v1.5.1
	github.com/svix/svix-webhooks v1.99.1
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
	golang.org/x/sys v0.38.0 // indirect
)
