module optipick-webhooks

go 1.26

require (
	github.com/joho/godotenv v1.5.1
	github.com/svix/svix-webhooks v1.99.1
)

require github.com/google/uuid v1.6.0 // indirect
