# syntax=docker/dockerfile:1
FROM composer:2.7 AS vendor
WORKDIR /app
COPY composer.json composer.lock ./
RUN composer install \
      --no-dev \
      --no-interaction \
      --no-scripts \
      --prefer-dist \
      --ignore-platform-reqs

FROM node:20-alpine AS assets
WORKDIR /app
COPY package.json package-lock.json vite.config.js ./
RUN npm ci
COPY resources/ resources/
RUN npm run build

FROM php:8.3-fpm-alpine AS app
RUN apk add --no-cache icu-libs libzip \
 && apk add --no-cache --virtual .build-deps $PHPIZE_DEPS icu-dev libzip-dev \
 && docker-php-ext-install -j"$(nproc)" intl opcache pdo_mysql zip \
 && apk del .build-deps
COPY <<EOF /usr/local/etc/php/conf.d/opcache.ini
opcache.enable=1
opcache.memory_consumption=192
opcache.validate_timestamps=0
EOF
WORKDIR /var/www/html
COPY --chown=www-data:www-data . .
COPY --from=vendor --chown=www-data:www-data /app/vendor/ ./vendor/
COPY --from=assets --chown=www-data:www-data /app/public/build/ ./public/build/
RUN php artisan config:cache && php artisan route:cache
USER www-data
VOLUME ["/var/www/html/storage"]
EXPOSE 9000
STOPSIGNAL SIGQUIT
CMD ["php-fpm"]
