#!/usr/bin/env bash
# Start MariaDB and Redis if they are down, and make the `taskhub` MariaDB login the tests use.
set -euo pipefail

if ! mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1; then
  echo "starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 1 60); do mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1 && break; sleep 1; done
fi
mysqladmin --protocol=socket -uroot ping >/dev/null

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null

# root is socket-only; TCP logins need a user with a password. Tests create test_* databases.
mysql --protocol=socket -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'taskhub'@'localhost' IDENTIFIED BY 'taskhub';
CREATE USER IF NOT EXISTS 'taskhub'@'127.0.0.1' IDENTIFIED BY 'taskhub';
GRANT ALL PRIVILEGES ON *.* TO 'taskhub'@'localhost';
GRANT ALL PRIVILEGES ON *.* TO 'taskhub'@'127.0.0.1';
CREATE DATABASE IF NOT EXISTS taskhub CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
FLUSH PRIVILEGES;
SQL
echo "MariaDB and Redis are up"
