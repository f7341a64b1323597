# Customisation script for the demo: runs inside the guest over the serial
# console. It writes a file, serves a custom web page, and starts a counter
# before the snapshot, so a resumed VM can be told apart from a rebooted one.
set -e
mkdir -p /srv/www/cgi-bin
cat > /srv/www/index.html <<'HTML'
<h1>Hello from a synthesized cloudlet VM</h1>
<p>This page was written into the custom VM before its snapshot.</p>
HTML
echo "created $(date -u +%FT%TZ) by the customisation script" > /root/custom.txt
cat > /usr/local/bin/counter <<'SH'
#!/bin/sh
n=0
# Written beside and renamed: a reader never sees the file empty mid-write.
while true; do n=$((n + 1)); echo "$n" > /srv/www/counter.tmp; mv /srv/www/counter.tmp /srv/www/counter.txt; sleep 1; done
SH
chmod +x /usr/local/bin/counter
cat > /srv/www/cgi-bin/status <<'SH'
#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "counter=$(cat /srv/www/counter.txt) boot_id=$(cat /proc/sys/kernel/random/boot_id) uptime=$(cut -d' ' -f1 /proc/uptime)"
cat /root/custom.txt
SH
chmod +x /srv/www/cgi-bin/status
setsid nohup /usr/local/bin/counter </dev/null >/dev/null 2>&1 &
setsid nohup busybox httpd -f -p 80 -h /srv/www </dev/null >/dev/null 2>&1 &
sleep 2
echo "counter at snapshot time: $(cat /srv/www/counter.txt)"
