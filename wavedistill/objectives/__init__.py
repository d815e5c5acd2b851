"""Training objectives: maximum likelihood for the teacher, density distillation for the student."""
