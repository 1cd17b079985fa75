module optipick-webhooks

go 1.26.0

require (
	github.com/go-json-experiment/json v1.27.2
	github.com/joho/godotenv v1.5.1
	github.com/svix/svix-webhooks v1.99.1
	golang.org/x/sync v0.25.0
)

require github.com/google/uuid v1.6.0 // indirect
