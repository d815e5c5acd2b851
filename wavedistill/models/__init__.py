"""The networks: WaveNet layers, output heads, the teacher (MAF direction), the student (IAF
direction), their fast inference paths and teacher sampling."""
