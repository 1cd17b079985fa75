# make bench: reads benchstat's CSV (-format csv) and prints, for each
# benchmark, the ratio of its median sec/op to a baseline measured in the
# same run: the first benchmark of the nearest group it is not the first of.
# With Verify1KiB/floor, Verify1KiB/library/1-secret and
# Verify1KiB/library/2-secrets,...: 1-secret is compared with floor, the
# 2-secrets ones with 1-secret. POSIX awk (tested with mawk, Debian's default).

# Only the sec/op table: it starts at its header line and ends at a blank one.
/^,sec\/op(,|$)/ { insec = 1; next }
/^$/ { insec = 0; next }
!insec || /^geomean,/ { next }

{
	# name,median,CI: the name may be quoted and hold commas; the numbers
	# do not, so take them from the end.
	n = split($0, f, ",")
	median = f[n - 1] + 0
	name = substr($0, 1, length($0) - length(f[n - 1]) - length(f[n]) - 2)
	gsub(/"/, "", name)
	sub(/-[0-9]+$/, "", name)   # the -GOMAXPROCS suffix

	# Remember the first benchmark under each group prefix.
	k = split(name, part, "/")
	prefix = part[1]
	for (i = 2; i <= k; i++) {
		if (!(prefix in first)) first[prefix] = name
		prefix = prefix "/" part[i]
	}
	med[name] = median
	names[++count] = name

	# The baseline: walk up from the nearest group.
	base = ""
	prefix = name
	for (i = k; i > 1; i--) {
		prefix = substr(prefix, 1, length(prefix) - length(part[i]) - 1)
		if (first[prefix] != name) { base = first[prefix]; break }
	}
	baseOf[name] = base
	if (length(name) > width) width = length(name)
}

END {
	if (count == 0) { print "bench-ratios: no sec/op table in the input" > "/dev/stderr"; exit 1 }
	print ""
	print "median sec/op, each as a ratio to a baseline from the same run:"
	for (j = 1; j <= count; j++) {
		name = names[j]
		base = baseOf[name]
		if (base == "") {
			ratio = ""
			label = ""
			for (i = 1; i <= count; i++) if (baseOf[names[i]] == name) label = "baseline"
		} else if (med[base] > 0) {
			ratio = sprintf("%.2fx", med[name] / med[base])
			label = "vs " substr(base, length(common(name, base)) + 1)
		} else {
			ratio = "?"
			label = "vs " base
		}
		printf "  %-" width "s  %6s  %s\n", name, ratio, label
	}
}

# common returns the longest shared prefix of a and b that ends with "/".
function common(a, b,    i, c) {
	c = ""
	for (i = 1; i <= length(a) && i <= length(b); i++) {
		if (substr(a, i, 1) != substr(b, i, 1)) break
		if (substr(a, i, 1) == "/") c = substr(a, 1, i)
	}
	return c
}
