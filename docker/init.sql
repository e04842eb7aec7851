-- taskhub: create the database on a MySQL 8 / MariaDB 10.6+ server you run yourself
-- (bare metal, a managed server):
--
--     mysql -u root -p < docker/init.sql
--
-- Tables are not made here: `python manage.py migrate` creates and upgrades them.
-- docker-compose.yml does not need this file: its mysql service creates DB_DATABASE itself
-- (MYSQL_DATABASE) with the same character set and collation (server flags).
--
-- utf8mb4 stores any Unicode text (task names, configs, logs); utf8mb4_unicode_ci is also the
-- collation the test suite creates its databases with, and it exists on both MySQL and MariaDB.
-- Change the name if DB_DATABASE in .env is not the default.

CREATE DATABASE IF NOT EXISTS task_management
    CHARACTER SET utf8mb4
    COLLATE utf8mb4_unicode_ci;

-- A login for the application rather than root (recommended outside a laptop). Replace the
-- password, keep it in DB_PASSWORD, set DB_USERNAME=taskhub, then uncomment:
-- CREATE USER IF NOT EXISTS 'taskhub'@'%' IDENTIFIED BY 'change-me';
-- GRANT ALL PRIVILEGES ON task_management.* TO 'taskhub'@'%';
