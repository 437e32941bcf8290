# Reference fits with lme4 (REML) and metafor (REML) of the published data sets the covariate agreement check uses.
# Writes, into the folder given as the first argument:
#   insteval.csv  lme4's InstEval (Bates et al.): 73,421 ratings y of lecturers d by students s, with the
#                 lecture's `service` (0/1, varies by cell) and the student's `studage` (4 levels, constant
#                 within a student: a row-level factor)
#   oats.csv      nlme's Oats (Yates 1935): a split-plot trial, 6 blocks x 3 varieties (whole plots), 4 nitrogen
#                 doses (sub-plots): `nitro` varies within a cell across its sub-plots
#   lme4.csv      dataset, term, estimate, se for the fixed effects, and the sds of the variance components
#                 (term "sd:<group>", se NA), with lme4's and R's versions and the seconds each fit took;
#                 dataset "bcg": metafor's meta-regression of the BCG trials' log odds ratios on absolute
#                 latitude, rma(yi, vi, mods = ~ ablat) (Colditz et al. 1994; metafor's dat.bcg), with "sd:tau"
# Run: Rscript benchmarks/references/reference_fits.R OUTDIR
suppressMessages({library(lme4); library(nlme); library(metafor)})
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."
dir.create(out, showWarnings = FALSE, recursive = TRUE)

ie <- lme4::InstEval
ie$studage <- factor(as.character(ie$studage), levels = c("2", "4", "6", "8"))  # treatment coding, as twoway's
write.csv(data.frame(s = ie$s, d = ie$d, y = ie$y, service = ie$service, studage = ie$studage, dept = ie$dept),
          file.path(out, "insteval.csv"), row.names = FALSE)
oats <- as.data.frame(nlme::Oats)
oats$Block <- factor(as.character(oats$Block))
write.csv(data.frame(Block = oats$Block, Variety = oats$Variety, nitro = oats$nitro, yield = oats$yield),
          file.path(out, "oats.csv"), row.names = FALSE)

rows <- list()
add <- function(dataset, m, seconds) {
  cf <- summary(m)$coefficients
  rows[[length(rows) + 1]] <<- data.frame(dataset = dataset, term = rownames(cf), estimate = cf[, 1],
                                          se = cf[, 2], seconds = seconds)
  vc <- as.data.frame(VarCorr(m))
  rows[[length(rows) + 1]] <<- data.frame(dataset = dataset, term = paste0("sd:", vc$grp), estimate = vc$sdcor,
                                          se = NA, seconds = seconds)
}
t <- system.time(m1 <- lmer(y ~ service + studage + (1 | s) + (1 | d), data = ie))[["elapsed"]]
add("insteval", m1, t)
t <- system.time(m2 <- lmer(yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety), data = oats))[["elapsed"]]
add("oats", m2, t)
bcg <- escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
t <- system.time(m3 <- rma(yi, vi, mods = ~ ablat, data = bcg))[["elapsed"]]
rows[[length(rows) + 1]] <- data.frame(dataset = "bcg", term = c(rownames(m3$beta), "sd:tau"),
                                       estimate = c(as.vector(m3$beta), sqrt(m3$tau2)), se = c(m3$se, NA),
                                       seconds = t)
res <- do.call(rbind, rows)
res$lme4 <- as.character(packageVersion("lme4"))
res$metafor <- as.character(packageVersion("metafor"))
res$R <- paste(R.version$major, R.version$minor, sep = ".")
write.csv(res, file.path(out, "lme4.csv"), row.names = FALSE)
print(res, row.names = FALSE)
